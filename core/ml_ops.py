"""The ``ai.onnx.ml`` ops at the front of a scikit-learn model that keep their input's shape.

skl2onnx writes a pipeline's preprocessing as these (``StandardScaler`` and ``MinMaxScaler`` as
``Scaler``, ``Normalizer``, ``SimpleImputer`` as ``Imputer``, ``Binarizer``), and onnx shape
inference gives their outputs a type but no shape: everything after them went unshaped, so a
scikit-learn MLP read "MACs unknown" and structured pruning left its three MatMuls whole ("an input
of unknown rank"). Their output has the input's shape; the element type is float for the two
that scale (whatever the input's), the input's for the others.
"""

from __future__ import annotations

import onnx

ML_DOMAIN = "ai.onnx.ml"
# op type → the output's element type (None: the input's)
SAME_SHAPE = {"Scaler": onnx.TensorProto.FLOAT, "Normalizer": onnx.TensorProto.FLOAT, "Imputer": None,
              "Binarizer": None}


# The ai.onnx.ml ops that hold a model's weights in their attributes (a LogisticRegression's, an SVM's,
# a forest's trees): nothing for prune or quantize, which edit weight tensors.
WEIGHTED = frozenset({"LinearClassifier", "LinearRegressor", "SVMClassifier", "SVMRegressor", "TreeEnsemble",
                      "TreeEnsembleClassifier", "TreeEnsembleRegressor"})


def keeps_shape(domain: str, op_type: str) -> bool:
    return domain == ML_DOMAIN and op_type in SAME_SHAPE


def output_type(op_type: str, input_type: int) -> int:
    """The element type of a shape-keeping ML op's output, given its input's."""
    return SAME_SHAPE[op_type] or input_type
