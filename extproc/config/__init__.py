"""Configuration: the typed gateway configuration (``model``), the strict section reader
(``reader``) and the Envoy bootstrap rendered from it (``envoy``)."""
