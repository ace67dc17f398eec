"""confirm_checkout: the customer-facing checkout API."""
