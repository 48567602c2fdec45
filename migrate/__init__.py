"""migrate: move an EPR component to Azure in staged, verified, resumable steps."""

__version__ = "0.1.0"
