"""The central services: registry and global-configuration publisher, witness,
timestamp authority."""
