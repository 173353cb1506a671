"""Redis rate limits (SPEC section 6)."""
