"""End to end: the local stack started as a user starts it, driven over real HTTP."""
