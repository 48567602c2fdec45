#!/bin/sh
# Freeze writes on premises: put the PPM+ database in read-only mode for new transactions.
# Needs PPM_ADMIN_DB_URL (a role allowed to ALTER DATABASE). Idempotent: safe to run twice.
set -eu
: "${PPM_ADMIN_DB_URL:?set PPM_ADMIN_DB_URL to an admin connection URL}"
psql "$PPM_ADMIN_DB_URL" -v ON_ERROR_STOP=1 -qc \
  "ALTER DATABASE ppm SET default_transaction_read_only = on; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'ppm' AND pid <> pg_backend_pid() AND backend_type = 'client backend';"
echo "PPM+ on premises is read-only"
