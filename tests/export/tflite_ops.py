"""The ops of a .tflite flatbuffer, for tests that check what a conversion produced."""

from __future__ import annotations


def tflite_ops(flatbuffer: bytes) -> list[tuple[str, int]]:
    """(op name, weight dtype or -1) of each op, in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    graph = model.subgraphs[0]
    out = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        weight = graph.tensors[op.inputs[1]].type if len(op.inputs) > 1 and op.inputs[1] >= 0 else -1
        out.append((name, weight))
    return out
