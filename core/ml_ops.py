"""The ops skl2onnx writes around a scikit-learn network that onnx shape inference leaves shapeless.

skl2onnx writes a pipeline's preprocessing as ``ai.onnx.ml`` ops (``StandardScaler`` and
``MinMaxScaler`` as ``Scaler``, ``Normalizer``, ``SimpleImputer`` as ``Imputer``, ``Binarizer``),
and a text pipeline's tokenizing as onnxruntime's ``com.microsoft`` Tokenizer before the standard
TfIdfVectorizer. onnx types their outputs without a shape (or not at all): everything after them went
unshaped, so a scikit-learn MLP read "MACs unknown" and structured pruning left its MatMuls whole
("an input of unknown rank"). The shape-keeping ops' output has the input's shape (float for the two
that scale, else the input's type); the Tokenizer's adds a token axis, whose length the text decides
(None here): TfIdfVectorizer's output is [examples, vocabulary] whatever it is.
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


def typed_output(domain: str, op_type: str, input_type: int, input_shape: list) -> tuple[int, list] | None:
    """(element type, shape) of such an op's first output from its first input's (a dim None where the
    data decides it), or None for any other op."""
    if keeps_shape(domain, op_type):
        return SAME_SHAPE[op_type] or input_type, list(input_shape)
    if domain == "com.microsoft" and op_type == "Tokenizer":
        return onnx.TensorProto.STRING, [*input_shape, None]
    return None
