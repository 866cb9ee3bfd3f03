"""Configuration: the typed vocabulary (``types``), the whole file as typed sections
(``model``), reading it (``load``), its JSON Schema (``schema``) and the Envoy bootstrap
rendered from it (``envoy``)."""
