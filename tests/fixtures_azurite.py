"""Azurite fixtures (see the module docstring once written)."""
