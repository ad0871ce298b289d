// Op registration for RANSAC-PnP (DSAC*-style pose from 2D-3D correspondences): RansacPnp (inference: the best
// hypothesis), RansacPnpHypotheses (DSAC training form: every hypothesis) and RansacPnpHypothesesGrad (its backward,
// registered as its gradient by the Python wrapper). The kernels are in ../kernels/ransac_pnp_kernels.cc, the
// framework-free core in ../../core/. Description: docs/ransac_pnp.md.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

#include <utility>
#include <vector>

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

// Attributes and the five inputs of both forward ops (and the first inputs of the backward): ranks, trailing
// dimensions, and B / N agreement. Sets *batch and *n.
Status CheckForwardInputs(InferenceContext* c, bool with_weights, DimensionHandle* batch, DimensionHandle* n) {
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
  const int valid_index = with_weights ? 4 : 3;
  if (with_weights) TF_RETURN_IF_ERROR(CheckInput(c, 3, "weights", 2, {}, "[B, N]", &weights));
  TF_RETURN_IF_ERROR(CheckInput(c, valid_index, "valid", 2, {}, "[B, N]", &valid));
  *batch = c->Dim(pixels, 0);
  *n = c->Dim(pixels, 1);
  std::vector<std::pair<const char*, ShapeHandle>> others = {{"coords_mm", coords}};
  if (with_weights) others.push_back({"weights", weights});
  others.push_back({"valid", valid});
  for (const auto& other : others) {
    if (!c->Merge(*batch, c->Dim(other.second, 0), batch).ok() || !c->Merge(*n, c->Dim(other.second, 1), n).ok())
      return InvalidArgument(other.first, " must have the batch size and number of points of pixels ",
                             c->DebugString(pixels), ", got ", c->DebugString(other.second));
  }
  if (!c->Merge(*batch, c->Dim(K, 0), batch).ok())
    return InvalidArgument("K must have the batch size of pixels ", c->DebugString(pixels), ", got ",
                           c->DebugString(K));
  return Status();
}

Status RansacPnpShape(InferenceContext* c) {
  DimensionHandle batch, n;
  TF_RETURN_IF_ERROR(CheckForwardInputs(c, /*with_weights=*/true, &batch, &n));
  c->set_output(0, c->MakeShape({batch, c->MakeDim(3), c->MakeDim(3)}));
  c->set_output(1, c->Matrix(batch, 3));
  c->set_output(2, c->Matrix(batch, n));
  c->set_output(3, c->Vector(batch));
  c->set_output(4, c->Vector(batch));
  return Status();
}

// Outputs of the training form, [B, H, ...].
Status RansacPnpHypothesesShape(InferenceContext* c) {
  DimensionHandle batch, n;
  TF_RETURN_IF_ERROR(CheckForwardInputs(c, /*with_weights=*/true, &batch, &n));
  int num_hypotheses;
  TF_RETURN_IF_ERROR(c->GetAttr("num_hypotheses", &num_hypotheses));
  const DimensionHandle h = c->MakeDim(num_hypotheses);
  c->set_output(0, c->MakeShape({batch, h, c->MakeDim(3), c->MakeDim(3)}));
  c->set_output(1, c->MakeShape({batch, h, c->MakeDim(3)}));
  c->set_output(2, c->Matrix(batch, h));
  c->set_output(3, c->MakeShape({batch, h, c->MakeDim(4)}));
  c->set_output(4, c->Matrix(batch, h));
  c->set_output(5, c->MakeShape({batch, h, c->MakeDim(3), c->MakeDim(3)}));
  c->set_output(6, c->MakeShape({batch, h, c->MakeDim(3)}));
  return Status();
}

// Backward: inputs pixels, coords_mm, k, valid, then the forward's outputs and the upstream gradients; each of those
// must be [B, H, ...] (H = num_hypotheses). Output [B, N, 3] like coords_mm.
Status RansacPnpHypothesesGradShape(InferenceContext* c) {
  DimensionHandle batch, n;
  TF_RETURN_IF_ERROR(CheckForwardInputs(c, /*with_weights=*/false, &batch, &n));
  int num_hypotheses;
  TF_RETURN_IF_ERROR(c->GetAttr("num_hypotheses", &num_hypotheses));
  struct Per {
    const char* name;
    std::vector<int> tail;
    const char* layout;
  };
  const Per per[] = {{"rotation", {3, 3}, "[B, H, 3, 3]"},        {"translation_mm", {3}, "[B, H, 3]"},
                     {"rotation_init", {3, 3}, "[B, H, 3, 3]"},   {"translation_init_mm", {3}, "[B, H, 3]"},
                     {"minimal_sets", {4}, "[B, H, 4]"},          {"ok", {}, "[B, H]"},
                     {"grad_rotation", {3, 3}, "[B, H, 3, 3]"},   {"grad_translation_mm", {3}, "[B, H, 3]"},
                     {"grad_score", {}, "[B, H]"},                {"grad_rotation_init", {3, 3}, "[B, H, 3, 3]"},
                     {"grad_translation_init_mm", {3}, "[B, H, 3]"}};
  for (int k = 0; k < 11; ++k) {
    ShapeHandle s = c->input(4 + k);
    const int rank = 2 + static_cast<int>(per[k].tail.size());
    if (c->RankKnown(s) && c->Rank(s) != rank)
      return InvalidArgument(per[k].name, " must be rank ", rank, " ", per[k].layout, ", got rank ", c->Rank(s));
    TF_RETURN_IF_ERROR(c->WithRank(s, rank, &s));
    DimensionHandle h = c->Dim(s, 1);
    if (!c->Merge(batch, c->Dim(s, 0), &batch).ok() || (c->ValueKnown(h) && c->Value(h) != num_hypotheses))
      return InvalidArgument(per[k].name, " must be ", per[k].layout, " with B of pixels and H = num_hypotheses = ",
                             num_hypotheses, ", got ", c->DebugString(s));
    for (size_t d = 0; d < per[k].tail.size(); ++d) {
      DimensionHandle dim = c->Dim(s, 2 + static_cast<int>(d));
      if (c->ValueKnown(dim) && c->Value(dim) != per[k].tail[d])
        return InvalidArgument(per[k].name, " must be ", per[k].layout, ", got ", c->DebugString(s));
    }
  }
  c->set_output(0, c->MakeShape({batch, n, c->MakeDim(3)}));
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

REGISTER_OP("RansacPnpHypotheses")
    .Input("pixels: float")
    .Input("coords_mm: float")
    .Input("k: float")
    .Input("weights: float")
    .Input("valid: bool")
    .Output("rotation: float")
    .Output("translation_mm: float")
    .Output("score: float")
    .Output("minimal_sets: int32")
    .Output("ok: bool")
    .Output("rotation_init: float")
    .Output("translation_init_mm: float")
    .Attr("num_hypotheses: int = 64")
    .Attr("threshold_px: float = 10.0")
    .Attr("seed: int = 0")
    .Attr("max_refine_iterations: int = 10")
    .Attr("max_refine_points: int = 0")
    .SetShapeFn(RansacPnpHypothesesShape)
    .Doc(R"doc(
Training form of RansacPnp (DSAC): every hypothesis, drawn as RansacPnp draws them, each refined. Differentiable
w.r.t. coords_mm (RansacPnpHypothesesGrad). docs/ransac_pnp.md, "Training form (DSAC)".

rotation: [B, H, 3, 3] refined rotation of hypothesis j (identity where ok is false); H = num_hypotheses.
translation_mm: [B, H, 3] refined translation (0 where ok is false).
score: [B, H] soft inlier count of the unrefined (minimal-solver) pose (0 where ok is false).
minimal_sets: [B, H, 4] indices into N of the minimal set (-1 where ok is false).
ok: [B, H] hypothesis j was made (false: degenerate item, or no minimal set agreed within the tries).
rotation_init: [B, H, 3, 3] the minimal solver's rotation (before refinement).
translation_init_mm: [B, H, 3] the minimal solver's translation.
max_refine_points: > 0: an item with more used correspondences refines every hypothesis on every stride-th of them
  only (stride = ceil(used / max_refine_points)); 0: on all inliers.
)doc");

REGISTER_OP("RansacPnpHypothesesGrad")
    .Input("pixels: float")
    .Input("coords_mm: float")
    .Input("k: float")
    .Input("valid: bool")
    .Input("rotation: float")
    .Input("translation_mm: float")
    .Input("rotation_init: float")
    .Input("translation_init_mm: float")
    .Input("minimal_sets: int32")
    .Input("ok: bool")
    .Input("grad_rotation: float")
    .Input("grad_translation_mm: float")
    .Input("grad_score: float")
    .Input("grad_rotation_init: float")
    .Input("grad_translation_init_mm: float")
    .Output("grad_coords_mm: float")
    .Attr("num_hypotheses: int = 64")
    .Attr("threshold_px: float = 10.0")
    .Attr("max_refine_iterations: int = 10")
    .Attr("max_refine_points: int = 0")
    .SetShapeFn(RansacPnpHypothesesGradShape)
    .Doc(R"doc(
Gradient of RansacPnpHypotheses w.r.t. coords_mm, given its inputs (but weights), outputs and the upstream gradients
of rotation, translation_mm, score, rotation_init, translation_init_mm. Unused correspondences, hypotheses with ok
false and degenerate items get 0; never NaN or inf. docs/ransac_pnp.md, "Training form (DSAC)".
)doc");

}  // namespace synthpose
