"""ONNX export of a fitted scikit-learn model (and its angry-vs-happy gate) as one graph."""

from __future__ import annotations

from pathlib import Path


def _to_onnx(model, n_inputs: int):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    return to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, n_inputs]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )


def export_onnx(model, n_inputs: int, path: Path, gate_model=None) -> dict:
    """Write one ONNX graph: output ``probabilities`` (model classes) and, with a gate,
    ``gate_probabilities`` ([P(angry), P(happy)] of the angry-vs-happy model), both from input ``input``."""
    import onnx
    from onnx import helper

    m1 = _to_onnx(model, n_inputs)
    names = {"prob": m1.graph.output[-1].name}
    if gate_model is not None:
        m2 = _to_onnx(gate_model, n_inputs)
        m2 = onnx.compose.add_prefix(m2, "gate_")
        g1, g2 = m1.graph, m2.graph
        # gate graph reads the shared input
        for node in g2.node:
            node.input[:] = ["input" if i == "gate_input" else i for i in node.input]
        out_gate = g2.output[-1]
        graph = helper.make_graph(
            list(g1.node) + list(g2.node),
            "calltone_emotion",
            list(g1.input),
            [g1.output[-1], out_gate],
            initializer=list(g1.initializer) + list(g2.initializer),
        )
        opsets = {o.domain: o.version for o in list(m1.opset_import) + list(m2.opset_import)}
        merged = helper.make_model(graph, opset_imports=[helper.make_opsetid(k, v) for k, v in opsets.items()])
        merged.ir_version = m1.ir_version
        onnx.checker.check_model(merged)
        m1 = merged
        names["gate"] = out_gate.name
    path.write_bytes(m1.SerializeToString())
    return names
