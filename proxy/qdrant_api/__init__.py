"""Qdrant's REST API, where a collection name is an alias: an application on qdrant-client points
at embedshift by changing its URL, and each of its users is routed, encoded and searched as the
native API (``proxy.web``) would. An edge beside ``proxy.web``: it speaks Qdrant's shapes and
calls the same request path (``proxy.serving``)."""
