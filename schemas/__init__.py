"""The evidence catalog, its JSON Schemas, export layouts and OpenAPI descriptions.

Not code: this file makes the directory the package ``xroad_hub.schemas`` when installed
(see pyproject.toml), so that ``xroad_hub.packaged.schema_file`` finds these files in a wheel
as in a source checkout.
"""
