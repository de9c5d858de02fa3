"""``metagen export``: a model file as one ONNX model (the views' matrices in, predictions out)."""

from __future__ import annotations

from pathlib import Path

import typer
from metagen_cli._common import out, user_errors


def export_command(
    model: Path = typer.Argument(..., help="Model file from `metagen fit`."),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write."),
) -> None:
    """Write the whole ensemble as one ONNX model; its inputs are the preprocessed views (see metagen.onnx_export)."""
    from metagen.model_file import load_fitted
    from metagen.onnx_export import export_onnx, input_widths

    with user_errors():
        fitted = load_fitted(model)
        path = export_onnx(fitted, onnx)
    inputs = ", ".join(f"{name}[N,{width}]" for name, width in input_widths(fitted).items())
    output = "value[N]" if fitted.task == "regression" else f"probabilities[N,{fitted.n_out}]"
    out.print(f"wrote {path} (inputs: {inputs}; output {output})", markup=False, highlight=False, soft_wrap=True)
