"""Development tooling, not the product: the local stack (``stack``), process helpers
(``procs``), development signing keys (``keys``), the offline demo model (``demo``) and the
admin API code generator (``protos``)."""
