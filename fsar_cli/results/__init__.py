"""Results: the results database (:mod:`.db`), CSV / markdown reports (:mod:`.report`) and the
published numbers they are compared with (:mod:`.published`)."""
