// Op registration for RANSAC-PnP (DSAC*-style pose from 2D-3D correspondences). The kernel is in
// ../kernels/ransac_pnp_kernels.cc, the framework-free core in ../../core/. Description: docs/ransac_pnp.md.
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

// Checks that input `index` has rank `rank` and, where known, the given trailing dimensions (-1: any).
Status CheckInput(InferenceContext* c, int index, const char* name, int rank, std::initializer_list<int> trailing,
                  const char* layout, ShapeHandle* out) {
  ShapeHandle s = c->input(index);
  if (c->RankKnown(s) && c->Rank(s) != rank)
    return InvalidArgument(name, " must be rank ", rank, " ", layout, ", got rank ", c->Rank(s));
  TF_RETURN_IF_ERROR(c->WithRank(s, rank, &s));
  int dim = rank - static_cast<int>(trailing.size());
  for (int want : trailing) {
    DimensionHandle d = c->Dim(s, dim);
    if (want >= 0 && c->ValueKnown(d) && c->Value(d) != want)
      return InvalidArgument(name, " must be ", layout, ": dimension ", dim, " must be ", want, ", got ",
                             c->Value(d));
    ++dim;
  }
  *out = s;
  return Status();
}

Status RansacPnpShape(InferenceContext* c) {
  int num_hypotheses, max_refine_iterations;
  float threshold_px;
  TF_RETURN_IF_ERROR(c->GetAttr("num_hypotheses", &num_hypotheses));
  TF_RETURN_IF_ERROR(c->GetAttr("threshold_px", &threshold_px));
  TF_RETURN_IF_ERROR(c->GetAttr("max_refine_iterations", &max_refine_iterations));
  if (num_hypotheses < 1) return InvalidArgument("num_hypotheses must be >= 1, got ", num_hypotheses);
  if (!(threshold_px > 0.0f)) return InvalidArgument("threshold_px must be > 0, got ", threshold_px);
  if (max_refine_iterations < 0)
    return InvalidArgument("max_refine_iterations must be >= 0, got ", max_refine_iterations);
  ShapeHandle pixels, coords, K, weights, valid;
  TF_RETURN_IF_ERROR(CheckInput(c, 0, "pixels", 3, {2}, "[B, N, 2]", &pixels));
  TF_RETURN_IF_ERROR(CheckInput(c, 1, "coords_mm", 3, {3}, "[B, N, 3]", &coords));
  TF_RETURN_IF_ERROR(CheckInput(c, 2, "K", 3, {3, 3}, "[B, 3, 3]", &K));
  TF_RETURN_IF_ERROR(CheckInput(c, 3, "weights", 2, {}, "[B, N]", &weights));
  TF_RETURN_IF_ERROR(CheckInput(c, 4, "valid", 2, {}, "[B, N]", &valid));
  DimensionHandle batch = c->Dim(pixels, 0), n = c->Dim(pixels, 1);
  const std::pair<const char*, ShapeHandle> others[] = {{"coords_mm", coords}, {"weights", weights}, {"valid", valid}};
  for (const auto& other : others) {
    if (!c->Merge(batch, c->Dim(other.second, 0), &batch).ok() || !c->Merge(n, c->Dim(other.second, 1), &n).ok())
      return InvalidArgument(other.first, " must have the batch size and number of points of pixels ",
                             c->DebugString(pixels), ", got ", c->DebugString(other.second));
  }
  if (!c->Merge(batch, c->Dim(K, 0), &batch).ok())
    return InvalidArgument("K must have the batch size of pixels ", c->DebugString(pixels), ", got ",
                           c->DebugString(K));
  c->set_output(0, c->MakeShape({batch, c->MakeDim(3), c->MakeDim(3)}));
  c->set_output(1, c->Matrix(batch, 3));
  c->set_output(2, c->Matrix(batch, n));
  c->set_output(3, c->Vector(batch));
  c->set_output(4, c->Vector(batch));
  return Status();
}

}  // namespace

REGISTER_OP("RansacPnp")
    .Input("pixels: float")
    .Input("coords_mm: float")
    .Input("k: float")
    .Input("weights: float")
    .Input("valid: bool")
    .Output("rotation: float")
    .Output("translation_mm: float")
    .Output("inliers: bool")
    .Output("score: float")
    .Output("ok: bool")
    .Attr("num_hypotheses: int = 64")
    .Attr("threshold_px: float = 10.0")
    .Attr("seed: int = 0")
    .Attr("max_refine_iterations: int = 10")
    .SetShapeFn(RansacPnpShape)
    .Doc(R"doc(
RANSAC-PnP as in DSAC*: P3P hypotheses from weighted minimal sets of 4, soft inlier scoring, the best one refined
by Levenberg-Marquardt on its inliers while the inlier set grows. Not differentiable. docs/ransac_pnp.md.

pixels: [B, N, 2] image coordinates (x, y) in pixels (OpenCV: pixel centres at integers).
coords_mm: [B, N, 3] model coordinates (mm) seen at those pixels.
k: [B, 3, 3] intrinsics (finite).
weights: [B, N] sampling weights (finite, >= 0); 0: never sampled, still scored.
valid: [B, N] false: the correspondence is ignored entirely (padding).
rotation: [B, 3, 3] model-to-camera rotation (identity where ok is false).
translation_mm: [B, 3] model-to-camera translation in mm (0 where ok is false).
inliers: [B, N] reprojection error below threshold_px under the returned pose.
score: [B] soft inlier count sum sigmoid(beta (threshold_px - e)), beta = 5 / threshold_px (0 where ok is false).
ok: [B] a pose was found (false: too few points, collinear points, singular K, no consistent minimal set).
num_hypotheses: hypotheses per item. threshold_px: inlier threshold in pixels.
seed: random seed; item b uses a generator seeded from (seed, b).
max_refine_iterations: refinement rounds at most (0: no refinement).
)doc");

}  // namespace synthpose
