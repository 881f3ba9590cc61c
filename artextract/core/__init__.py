"""What every layer builds on and that depends on no other part of artextract: the strict config base
and the storage section (``schema``), object storage and local files (``storage``), guarded http(s)
reads (``http``) and the run records every job writes (``runinfo``)."""
