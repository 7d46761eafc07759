"""Development tooling: a one-machine PKI and test federations. Nothing in the product
depends on it."""
