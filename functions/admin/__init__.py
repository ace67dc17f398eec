"""admin: the operators' API under /admin/* (IAM auth) for failed compensations and orders."""
