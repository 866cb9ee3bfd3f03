"""Who is calling: JWT/JWKS verification (``jwt``), provider credentials (``credentials``) and
admin-API authorisation (``admin``)."""
