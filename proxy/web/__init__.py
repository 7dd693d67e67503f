"""HTTP at the edge: the aiohttp app, its middleware, the OpenAPI document and the handlers."""
