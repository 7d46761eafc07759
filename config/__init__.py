"""The demo federation file, config/demo-federation.toml.

Not code: this file makes the directory the package ``xroad_hub.config`` when installed
(see pyproject.toml), so that ``xroad-hub up`` and ``xroad-hub demo`` find the demo
federation from an installed wheel, in any working directory.
"""
