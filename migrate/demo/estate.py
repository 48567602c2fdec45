"""A synthetic EPR estate: patients, encounters and observations in SQLite, and scanned letters in folders.

Everything is generated from a seed; no real patient data exists anywhere in it. NHS numbers use the
999 range that is never issued to real patients.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
    update,
)

GIVEN = ["Zoë", "Łukasz", "Siobhán", "José", "Aoife", "Mohammed", "Priya", "Ngọc", "Søren", "Chloé", "Amara",
         "Oluwaseun", "Gráinne", "Jürgen", "Fatimah", "Wei", "Ellie", "Tomasz", "Dafydd", "Björk"]
FAMILY = ["O'Brien", "Nguyễn", "Ólafsdóttir", "Smith", "Khan", "Kowalski", "Patel", "Jones", "Müller", "Ødegaard",
          "Ní Bhriain", "Okafor", "Williams", "García", "Brown", "Davies", "Singh", "Evans", "Wright", "Zhang"]
WARDS = ["Ward 12", "Ward 27", "Ward 4 (Cardiology)", "AMU", "Children's Ward 50", "Ward J92"]
OBSERVATIONS = [("8867-4", "heart rate", "/min", 50, 130), ("8480-6", "systolic BP", "mm[Hg]", 85, 190),
                ("8310-5", "temperature", "Cel", 35, 40), ("59408-5", "SpO2", "%", 85, 100),
                ("9279-1", "respiratory rate", "/min", 8, 32), ("2339-0", "glucose", "mmol/L", 3, 20)]
EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

metadata = MetaData()
patients = Table(
    "patients", metadata,
    Column("id", Integer, primary_key=True),
    Column("nhs_number", String(10), nullable=False, unique=True),
    Column("given_name", String(100), nullable=False),
    Column("family_name", String(100), nullable=False),
    Column("date_of_birth", Date, nullable=False),
    Column("postcode", String(8)),  # NULL for some
    Column("deceased", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
encounters = Table(
    "encounters", metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", Integer, ForeignKey("patients.id"), nullable=False),
    Column("ward", String(40), nullable=False),
    Column("admitted_at", DateTime(timezone=True), nullable=False),
    Column("discharged_at", DateTime(timezone=True)),  # NULL while on the ward
    Column("reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_encounters_patient", "patient_id"),
)
observations = Table(
    "observations", metadata,
    Column("id", Integer, primary_key=True),
    Column("encounter_id", Integer, ForeignKey("encounters.id"), nullable=False),
    Column("code", String(16), nullable=False),
    Column("value", Numeric(12, 4), nullable=False),
    Column("unit", String(16), nullable=False),
    Column("observed_at", DateTime(timezone=True), nullable=False),
    Column("note", Text),  # NULL for most
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_observations_encounter", "encounter_id"),
)


@dataclass
class EstateSize:
    patients: int = 0
    encounters: int = 0
    observations: int = 0
    letters: int = 0
    letter_bytes: int = 0


def nhs_number(n: int) -> str:
    """A synthetic NHS number in the never-issued 999 range, with a valid modulus-11 check digit."""
    while True:
        body = f"999{n:06d}"
        total = sum(int(d) * (10 - i) for i, d in enumerate(body))
        check = 11 - total % 11
        if check == 11:
            check = 0
        if check != 10:
            return body + str(check)
        n += 1_000_000 - 1  # skip bodies whose check digit is invalid, staying unique


def build_database(url: str, n_patients: int, rng: random.Random) -> EstateSize:
    engine = create_engine(url)
    metadata.create_all(engine)
    size = EstateSize()
    with engine.begin() as conn:
        pats, encs, obs = [], [], []
        enc_id = obs_id = 0
        for pid in range(1, n_patients + 1):
            pats.append({
                "id": pid, "nhs_number": nhs_number(pid), "given_name": rng.choice(GIVEN),
                "family_name": rng.choice(FAMILY),
                "date_of_birth": date(1930, 1, 1) + timedelta(days=rng.randrange(0, 34000)),
                "postcode": None if rng.random() < 0.1 else f"LS{rng.randrange(1, 29)} {rng.randrange(1, 9)}"
                                                             f"{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJ')}",
                "deceased": rng.random() < 0.02, "updated_at": EPOCH + timedelta(minutes=pid),
            })
            for _ in range(rng.randrange(1, 4)):
                enc_id += 1
                admitted = EPOCH + timedelta(hours=rng.randrange(0, 24 * 300), seconds=rng.randrange(3600),
                                             microseconds=rng.randrange(1_000_000))
                encs.append({
                    "id": enc_id, "patient_id": pid, "ward": rng.choice(WARDS), "admitted_at": admitted,
                    "discharged_at": None if rng.random() < 0.2 else admitted + timedelta(hours=rng.randrange(2, 400)),
                    "reason": None if rng.random() < 0.3 else rng.choice(["chest pain", "fall at home", "sepsis?",
                                                                          "shortness of breath", "post-op review"]),
                    "updated_at": admitted,
                })
                for _ in range(rng.randrange(2, 8)):
                    obs_id += 1
                    code, _label, unit, low, high = rng.choice(OBSERVATIONS)
                    at = admitted + timedelta(minutes=rng.randrange(0, 6000))
                    obs.append({
                        "id": obs_id, "encounter_id": enc_id, "code": code,
                        "value": Decimal(str(round(rng.uniform(low, high), 4))), "unit": unit, "observed_at": at,
                        "note": None if rng.random() < 0.85 else rng.choice(["repeat in 1h", "patient asleep",
                                                                             "NEWS2 escalated", "", "refused"]),
                        "updated_at": at,
                    })
        conn.execute(insert(patients), pats)
        conn.execute(insert(encounters), encs)
        conn.execute(insert(observations), obs)
        size.patients, size.encounters, size.observations = len(pats), len(encs), len(obs)
    engine.dispose()
    return size


def _letter_bytes(rng: random.Random, patient: int, length: int) -> bytes:
    header = f"%PDF-1.4\n% synthetic letter for test patient {patient}\n".encode()
    body = rng.randbytes(max(0, length - len(header)))
    return header + body


def build_letters(root: Path, count: int, rng: random.Random) -> EstateSize:
    """Letters in nested folders, with the awkward cases a real share has."""
    size = EstateSize()
    specials: list[tuple[str, bytes]] = [
        ("empty/zero-byte placeholder.pdf", b""),
        ("2026/Ward 4 (Cardiology)/Zoë Ólafsdóttir – discharge summary.pdf", _letter_bytes(rng, 7, 20_000)),
        ("2026/AMU/scan #12 100% + notes; final.pdf", _letter_bytes(rng, 8, 9_000)),
        ("archive/a/b/c/d/e/f/g/deeply nested referral.pdf", _letter_bytes(rng, 9, 4_000)),
        ("scans/large radiology scan.tiff", _letter_bytes(rng, 10, 6 * 1024 * 1024 + 12345)),
    ]
    for n in range(max(0, count - len(specials))):
        year = 2024 + n % 3
        ward = WARDS[n % len(WARDS)]
        specials.append((f"{year}/{ward}/patient-{n % 997:04d}/letter-{n:05d}.pdf",
                         _letter_bytes(rng, n, rng.randrange(2_000, 60_000))))
    for relative, data in specials:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        size.letters += 1
        size.letter_bytes += len(data)
    return size


@dataclass
class ClinicalWrites:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    files_added: int = 0
    files_changed: int = 0
    files_deleted: int = 0


def simulate_clinical_writes(url: str, letters: Path, rng: random.Random, at: datetime) -> ClinicalWrites:
    """What a ward does while both systems run: new observations, a corrected record, an entry in error
    removed, a new letter, a re-scanned letter, a letter withdrawn."""
    out = ClinicalWrites()
    engine = create_engine(url)
    with engine.begin() as conn:
        last_obs = conn.execute(select(func.max(observations.c.id))).scalar() or 0
        enc = conn.execute(select(encounters.c.id).order_by(encounters.c.id.desc()).limit(1)).scalar()
        new = [{"id": last_obs + i, "encounter_id": enc, "code": "8867-4",
                "value": Decimal(f"{rng.randrange(60, 110)}.{rng.randrange(0, 9999):04d}"), "unit": "/min",
                "observed_at": at, "note": "obs round (demo)" if i % 2 else None, "updated_at": at}
               for i in range(1, 26)]
        conn.execute(insert(observations), new)
        out.inserted = len(new)
        out.updated += conn.execute(update(patients).where(patients.c.id.in_([3, 5, 8])).values(
            postcode="LS9 7TF", family_name="Ó Súilleabháin", updated_at=at)).rowcount
        out.updated += conn.execute(update(encounters).where(encounters.c.id == 2).values(
            discharged_at=at, reason="discharged home", updated_at=at)).rowcount
        out.deleted = conn.execute(delete(observations).where(observations.c.id.in_([4, 11]))).rowcount
    engine.dispose()
    (letters / "2026/AMU/new admission letter.pdf").write_bytes(_letter_bytes(rng, 42, 15_000))
    out.files_added = 1
    rescanned = letters / "2026/Ward 4 (Cardiology)/Zoë Ólafsdóttir – discharge summary.pdf"
    rescanned.write_bytes(_letter_bytes(rng, 7, 21_000))
    out.files_changed = 1
    (letters / "archive/a/b/c/d/e/f/g/deeply nested referral.pdf").unlink()
    out.files_deleted = 1
    return out
