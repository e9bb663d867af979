"""The op handlers, one module per family; importing this package registers them all.

Each module registers its handlers in the compiler's registry (``_OPS``, with the ``@_op``
decorator) when it is imported.  No op type is registered twice, so the import order does
not change what runs; it follows the order of the former single module.
"""

from mcomp.torch_graph.ops import elementwise  # noqa: F401
from mcomp.torch_graph.ops import nn  # noqa: F401
from mcomp.torch_graph.ops import shape  # noqa: F401
from mcomp.torch_graph.ops import reduction  # noqa: F401
from mcomp.torch_graph.ops import resize  # noqa: F401
from mcomp.torch_graph.ops import control  # noqa: F401
from mcomp.torch_graph.ops import rnn  # noqa: F401
from mcomp.torch_graph.ops import quant  # noqa: F401
from mcomp.torch_graph.ops import ml  # noqa: F401
