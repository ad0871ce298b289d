// Op registration for the Projection Loss (silhouette IoU of projected point clouds). The kernels are in
// ../kernels/projection_loss_kernels.cc, the framework-free core in ../../core/. Rules: docs/projection_loss.md.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace synthpose {

using ::tensorflow::Status;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// Checks the attrs and that `name` is [B, N, 2] (rank and last dimension, where known).
Status CheckPoints(InferenceContext* c, int index, const char* name, ShapeHandle* out) {
  ShapeHandle s = c->input(index);
  if (c->RankKnown(s) && c->Rank(s) != 3)
    return InvalidArgument(name, " must be rank 3 [B, N, 2], got rank ", c->Rank(s));
  TF_RETURN_IF_ERROR(c->WithRank(s, 3, &s));
  DimensionHandle last = c->Dim(s, 2);
  if (c->ValueKnown(last) && c->Value(last) != 2)
    return InvalidArgument(name, " must have last dimension 2 (u, v), got ", c->Value(last));
  DimensionHandle n = c->Dim(s, 1);
  if (c->ValueKnown(n) && c->Value(n) == 0) return InvalidArgument(name, " must have N > 0 points, got N = 0");
  *out = s;
  return Status();
}

Status CheckAttrs(InferenceContext* c) {
  int height, width;
  float scale;
  TF_RETURN_IF_ERROR(c->GetAttr("height", &height));
  TF_RETURN_IF_ERROR(c->GetAttr("width", &width));
  TF_RETURN_IF_ERROR(c->GetAttr("scale", &scale));
  if (height <= 0) return InvalidArgument("height must be > 0, got ", height);
  if (width <= 0) return InvalidArgument("width must be > 0, got ", width);
  if (!(scale > 0.0f)) return InvalidArgument("scale must be > 0, got ", scale);
  return Status();
}

Status LossShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(CheckAttrs(c));
  ShapeHandle pred, gt;
  TF_RETURN_IF_ERROR(CheckPoints(c, 0, "pred_points_2d", &pred));
  TF_RETURN_IF_ERROR(CheckPoints(c, 1, "gt_points_2d", &gt));
  DimensionHandle batch;
  if (!c->Merge(c->Dim(pred, 0), c->Dim(gt, 0), &batch).ok())
    return InvalidArgument("pred_points_2d and gt_points_2d must have the same batch size, got ",
                           c->DebugString(pred), " and ", c->DebugString(gt));
  c->set_output(0, c->Vector(batch));
  if (c->num_outputs() > 1) c->set_output(1, c->MakeShape({batch, c->Dim(pred, 1), c->MakeDim(2)}));
  return Status();
}

Status GradShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(CheckAttrs(c));
  ShapeHandle pred, gt, grad;
  TF_RETURN_IF_ERROR(CheckPoints(c, 0, "pred_points_2d", &pred));
  TF_RETURN_IF_ERROR(CheckPoints(c, 1, "gt_points_2d", &gt));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &grad));
  DimensionHandle batch;
  if (!c->Merge(c->Dim(pred, 0), c->Dim(gt, 0), &batch).ok())
    return InvalidArgument("pred_points_2d and gt_points_2d must have the same batch size");
  if (!c->Merge(batch, c->Dim(grad, 0), &batch).ok())
    return InvalidArgument("grad_loss must have the batch size of pred_points_2d");
  c->set_output(0, pred);
  return Status();
}

}  // namespace

REGISTER_OP("ProjectionIouLoss")
    .Input("pred_points_2d: float")
    .Input("gt_points_2d: float")
    .Output("loss: float")
    .Attr("height: int")
    .Attr("width: int")
    .Attr("scale: float = 1.0")
    .SetShapeFn(LossShape)
    .Doc(R"doc(
Projection Loss: 1 - IoU of the binary images drawn from two sets of 2D points, per batch element.

pred_points_2d: [B, N, 2] predicted points (u, v) in camera pixels (non-finite: not drawn).
gt_points_2d: [B, M, 2] ground-truth points (u, v) in camera pixels.
loss: [B] 1 - I/U (0 when both images are empty).
height: camera image height (pixels). width: camera image width (pixels).
scale: the images are drawn at round(height*scale) x round(width*scale); a point goes to pixel
  (round_half_up(v*scale), round_half_up(u*scale)).
)doc");

REGISTER_OP("ProjectionIouLossWithGrad")
    .Input("pred_points_2d: float")
    .Input("gt_points_2d: float")
    .Output("loss: float")
    .Output("grad_unit: float")
    .Attr("height: int")
    .Attr("width: int")
    .Attr("scale: float = 1.0")
    .SetShapeFn(LossShape)
    .Doc(R"doc(
ProjectionIouLoss and its gradient in one pass (one drawing of both silhouettes): the training path.

loss: [B] as ProjectionIouLoss.
grad_unit: [B, N, 2] dloss[b]/dpred_points_2d[b] for an upstream gradient of 1; the registered gradient is
  grad_unit * grad_loss[:, None, None].
)doc");

REGISTER_OP("ProjectionIouLossGrad")
    .Input("pred_points_2d: float")
    .Input("gt_points_2d: float")
    .Input("grad_loss: float")
    .Output("grad_pred_points_2d: float")
    .Attr("height: int")
    .Attr("width: int")
    .Attr("scale: float = 1.0")
    .SetShapeFn(GradShape)
    .Doc(R"doc(
Hand-written approximate gradient of ProjectionIouLoss with respect to pred_points_2d (docs/projection_loss.md).
)doc");

}  // namespace synthpose
