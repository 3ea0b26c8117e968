"""FP16 variant of an ONNX model, with float32 inputs and outputs kept so every runtime feeds it the same way."""

from __future__ import annotations

from pathlib import Path

from runtime.errors import ModelRejected


def toposort(graph) -> None:
    """Reorder `graph.node` in place so every node follows its producers (the converter appends its input casts
    at the end, which the ONNX checker and TensorRT's parser reject)."""
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise ModelRejected("FP16 graph has a cycle or an input no node produces: "
                                f"{sorted({i for n in pending for i in n.input} - produced)[:5]}")
        for n in ready:
            ordered.append(n)
            produced.update(n.output)
        ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ids]
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def drop_initializer_inputs(model) -> None:
    """Remove initializers from the graph inputs (IR < 4 lists every weight as an input too), raising the IR
    version to 4, which allows initializers that are not inputs. Converters and quantizers otherwise treat the
    weights as inputs (the FP16 converter, for one, keeps them FP32 and adds a Cast per weight)."""
    init_names = {i.name for i in model.graph.initializer}
    if any(i.name in init_names for i in model.graph.input):
        kept = [i for i in model.graph.input if i.name not in init_names]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(model.ir_version, 4)


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # IR < 4 lists every initializer as a graph input too; the converter would keep those "inputs" FP32 and add a
    # Cast per weight. IR 4 allows initializers that are not inputs, so drop them from the inputs first.
    drop_initializer_inputs(model)
    try:
        # Resize keeps FP32: its scales/roi inputs must stay float32 for ONNX Runtime and TensorRT.
        fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=["Resize", "Upsample"])
        toposort(fp16.graph)
        onnx.checker.check_model(fp16)
    except ModelRejected:
        raise
    except Exception as err:
        raise ModelRejected(f"{src}: FP16 conversion failed: {err}") from err
    onnx.save(fp16, str(dst))
