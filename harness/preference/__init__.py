"""Human preference: blind pairwise votes on two models' replies, stored in SQLite, and what they say."""
