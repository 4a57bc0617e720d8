"""KServe Open Inference Protocol V2 (REST) messages as pydantic models.

These models document the wire format (OpenAPI, JSON Schema) and serve clients that want validated
objects. The agent's hot inference path does not build them per request: it uses `protocols.binary`,
which decodes bodies straight to numpy. Model and tensor names are plain strings here because these
messages also describe foreign V2 servers (Triton, KServe), whose names are not limited to `Name`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from protocols.common import WireModel
from protocols.datatypes import Datatype

ParameterValue = bool | int | float | str
Parameters = dict[str, ParameterValue]
# A dimension of a tensor that carries data; metadata dimensions may also be -1 (variable).
Dim = Annotated[int, Field(ge=0)]
MetadataDim = Annotated[int, Field(ge=-1)]
TensorName = Annotated[str, Field(min_length=1)]


class InferInputTensor(WireModel):
    """One input tensor of an inference request."""

    name: TensorName = Field(description="Name of the model input.")
    shape: tuple[Dim, ...] = Field(description="Shape of the tensor, batch axis included when batching.")
    datatype: Datatype = Field(description="KServe V2 datatype of the elements.")
    parameters: Parameters | None = Field(
        default=None,
        description="Tensor parameters; `binary_data_size` (bytes) when the data follows the JSON header.",
    )
    data: list[Any] | None = Field(
        default=None,
        description="Row-major elements, flat or nested; BYTES as strings. Absent when sent as binary.",
    )


class RequestedOutput(WireModel):
    """An output the client asks for, with how it wants it returned."""

    name: TensorName = Field(description="Name of the model output.")
    parameters: Parameters | None = Field(
        default=None, description="Output parameters; `binary_data: true` asks for binary tensor data."
    )


class InferRequest(WireModel):
    """Body (JSON part) of POST v2/models/{model}[/versions/{version}]/infer; other top-level fields (KServe's
    `model_name`) are ignored, as Triton does."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    id: str | None = Field(default=None, description="Request identifier, echoed in the response.")
    parameters: Parameters | None = Field(
        default=None,
        description=(
            "Request parameters: `priority` (1 = highest, 0 = default level), `timeout` (microseconds), "
            "`binary_data_output` (all outputs as binary)."
        ),
    )
    inputs: tuple[InferInputTensor, ...] = Field(min_length=1, description="Input tensors.")
    outputs: tuple[RequestedOutput, ...] | None = Field(
        default=None, description="Outputs to return; absent means every output of the model."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> InferRequest:
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate input names")
        if self.outputs is not None:
            out = [o.name for o in self.outputs]
            if len(set(out)) != len(out):
                raise ValueError("duplicate requested output names")
        return self


class InferOutputTensor(WireModel):
    """One output tensor of an inference response."""

    name: TensorName = Field(description="Name of the model output.")
    shape: tuple[Dim, ...] = Field(description="Shape of the tensor.")
    datatype: Datatype = Field(description="KServe V2 datatype of the elements.")
    parameters: Parameters | None = Field(
        default=None,
        description="Tensor parameters; `binary_data_size` (bytes) when the data follows the JSON header.",
    )
    data: list[Any] | None = Field(
        default=None, description="Row-major elements, flat; BYTES as strings. Absent when sent as binary."
    )


class InferResponse(WireModel):
    """Body (JSON part) of a successful inference response."""

    model_name: str = Field(min_length=1, description="Name of the model (pipeline) that answered.")
    model_version: str | None = Field(default=None, description="Version of the model that answered.")
    id: str | None = Field(default=None, description="The request's `id`, when it had one.")
    parameters: Parameters | None = Field(default=None, description="Response parameters.")
    outputs: tuple[InferOutputTensor, ...] = Field(description="Output tensors.")


class ServerMetadata(WireModel):
    """Body of GET v2."""

    name: str = Field(description="Server name.")
    version: str = Field(description="Server version.")
    extensions: tuple[str, ...] = Field(description="Protocol extensions supported, e.g. `binary_tensor_data`.")


class MetadataTensor(WireModel):
    """An input or output of a model as model metadata describes it."""

    name: TensorName = Field(description="Tensor name.")
    datatype: Datatype = Field(description="KServe V2 datatype of the elements.")
    shape: tuple[MetadataDim, ...] = Field(description="Shape; -1 for a variable dimension (e.g. batch).")


class ModelMetadata(WireModel):
    """Body of GET v2/models/{model}[/versions/{version}]."""

    name: str = Field(min_length=1, description="Model (pipeline) name.")
    versions: tuple[str, ...] | None = Field(default=None, description="Versions of the model available.")
    platform: str = Field(
        description="Framework/backend, e.g. `onnxruntime_onnx`, `tensorrt_plan`, `pytorch_libtorch`."
    )
    inputs: tuple[MetadataTensor, ...] = Field(description="Model inputs.")
    outputs: tuple[MetadataTensor, ...] = Field(description="Model outputs.")


class ErrorResponse(WireModel):
    """Body of every error response, as Triton and tritonclient expect it."""

    error: str = Field(description="Human-readable error message.")


V2_MODELS: tuple[type[WireModel], ...] = (
    InferInputTensor,
    RequestedOutput,
    InferRequest,
    InferOutputTensor,
    InferResponse,
    ServerMetadata,
    MetadataTensor,
    ModelMetadata,
    ErrorResponse,
)
