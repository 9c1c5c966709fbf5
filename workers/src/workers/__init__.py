"""The intake workers, their operator command lines, and the library they share.

Workers (`python -m workers.<name>`; each a pure core plus a small main(), declared in
`workers.catalogue`): heartbeat, classifier, registrar, stager, layouts (the layout registry
sync), audit (the raw zone check).
Operator command lines: roles (object-store roles: render, check), db_roles (metadata-DB roles:
apply, check), store (ensure-bucket), tables (print a metadata table).
Shared library: catalogue, settings, runtime (the Pipes/standalone entry), db, store, inbox,
discovery (the sensor's decisions), manifest, outcomes, layouts' parsing, faults (crash points
for the reliability suite).
"""
