"""nydus support: the RAFS v6 format, the converter, lazy mounts.

`import httpx` also imports httpx's own command-line client (click, rich, pygments): 45 ms
of a lazy mount's start-up, paid by every node at once when a cluster starts an image.
Before any module here imports httpx, an empty stand-in makes httpx skip it (httpx.main,
which nothing here uses, becomes a stub).
"""

import sys
import types

sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))
