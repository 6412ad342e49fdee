"""Bundled recipes (installed as the ``lth_recipes`` package so ``lth recipes`` finds them)."""
