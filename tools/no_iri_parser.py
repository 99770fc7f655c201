"""A pytest plugin that spares every pytest process seconds of start-up (``-p tools.no_iri_parser``).

nbformat, which nbval, jupytext and nbgrader import in every pytest process (the controller and each
xdist worker), imports jsonschema, whose optional "iri" format checker builds an Earley parser from the
rfc3987-syntax grammar at import: about 3 s of each process's start on a 2-core CPU, for a format that no
notebook schema names (nbformat validates without a format checker). Loaded with ``-p``, this module is
imported before the plugins found by entry point; marking the package absent makes jsonschema leave out
that one checker and nothing else.
"""

import sys

sys.modules.setdefault("rfc3987_syntax", None)
