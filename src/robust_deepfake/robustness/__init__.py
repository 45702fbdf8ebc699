"""Attacks, the attack sweep, eps units and the reg-vs-baseline verdict."""
