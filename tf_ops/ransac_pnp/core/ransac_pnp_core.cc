// RANSAC-PnP core: argument checks, the per-item driver (sampling -> scoring -> refinement) and the C ABI.
#include "tf_ops/ransac_pnp/core/ransac_pnp_core.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "tf_ops/ransac_pnp/core/ransac_pnp_internal.h"

namespace synthpose {
namespace ransac_pnp {

bool MakeCamera(const float* K, Camera* cam) {
  double largest = 0.0;
  for (int k = 0; k < 9; ++k) {
    if (!std::isfinite(K[k])) return false;
    cam->K[k] = K[k];
    largest = std::fmax(largest, std::fabs(cam->K[k]));
  }
  const double* A = cam->K;
  // Inverse by the adjugate: K_inv = adj(K) / det(K).
  const double c00 = A[4] * A[8] - A[5] * A[7], c01 = A[5] * A[6] - A[3] * A[8], c02 = A[3] * A[7] - A[4] * A[6];
  const double det = A[0] * c00 + A[1] * c01 + A[2] * c02;
  if (!(std::fabs(det) > RP_K_SINGULAR_REL_TOL * largest * largest * largest)) return false;
  double* I = cam->K_inv;
  I[0] = c00 / det;
  I[1] = (A[2] * A[7] - A[1] * A[8]) / det;
  I[2] = (A[1] * A[5] - A[2] * A[4]) / det;
  I[3] = c01 / det;
  I[4] = (A[0] * A[8] - A[2] * A[6]) / det;
  I[5] = (A[2] * A[3] - A[0] * A[5]) / det;
  I[6] = c02 / det;
  I[7] = (A[1] * A[6] - A[0] * A[7]) / det;
  I[8] = (A[0] * A[4] - A[1] * A[3]) / det;
  for (int k = 0; k < 9; ++k)
    if (!std::isfinite(I[k])) return false;
  return true;
}

namespace {

// Unit bearing K^-1 (u, v, 1) / |.|; false when it is not finite.
bool Bearing(const Camera& cam, double u, double v, double out[3]) {
  const double* I = cam.K_inv;
  for (int r = 0; r < 3; ++r) out[r] = I[3 * r] * u + I[3 * r + 1] * v + I[3 * r + 2];
  const double norm = std::sqrt(out[0] * out[0] + out[1] * out[1] + out[2] * out[2]);
  if (!(norm > 0.0) || !std::isfinite(norm)) return false;
  for (int r = 0; r < 3; ++r) out[r] /= norm;
  return true;
}

}  // namespace

void CollectCorrespondences(const float* pixels, const float* coords, const float* weights, const uint8_t* valid,
                            int n, const Camera& cam, Correspondences* c) {
  double total_weight = 0.0;
  for (int i = 0; i < n; ++i) {
    if (valid && !valid[i]) continue;
    const float u = pixels[2 * i], v = pixels[2 * i + 1];
    const float* X = coords + 3 * i;
    if (!std::isfinite(u) || !std::isfinite(v) || !std::isfinite(X[0]) || !std::isfinite(X[1]) ||
        !std::isfinite(X[2]))
      continue;
    double b[3];
    if (!Bearing(cam, u, v, b)) continue;
    const int position = static_cast<int>(c->index.size());
    c->index.push_back(i);
    c->u.push_back(u);
    c->v.push_back(v);
    c->x.push_back(X[0]);
    c->y.push_back(X[1]);
    c->z.push_back(X[2]);
    c->bx.push_back(b[0]);
    c->by.push_back(b[1]);
    c->bz.push_back(b[2]);
    if (weights == nullptr) {
      c->sampleable.push_back(position);
    } else if (weights[i] > 0.0f) {
      c->sampleable.push_back(position);
      total_weight += weights[i];
      c->cumulative.push_back(total_weight);
    }
  }
}

int PrepareItem(const float* pixels, const float* coords, const float* K, const float* weights, const uint8_t* valid,
                int n, Camera* cam, Correspondences* c) {
  if (!MakeCamera(K, cam)) return RP_ITEM_SINGULAR_K;
  // The used correspondences (valid and finite), and which of them may be sampled (weight > 0).
  CollectCorrespondences(pixels, coords, weights, valid, n, *cam, c);
  if (c->sampleable.size() < RP_MINIMAL_SET_SIZE) return RP_ITEM_TOO_FEW_POINTS;
  if (SampleablePointsCollinear(*c)) return RP_ITEM_COLLINEAR_POINTS;
  return RP_ITEM_OK;
}

namespace {

struct ItemOutputs {
  float* R;
  float* t;
  uint8_t* inliers;
  float* score;
  uint8_t* ok;
  int32_t* status;
};

void WriteFailure(const ItemOutputs& out, int n, int item_status) {
  static const float kIdentity[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  std::memcpy(out.R, kIdentity, sizeof(kIdentity));
  out.t[0] = out.t[1] = out.t[2] = 0.0f;
  if (n > 0) std::memset(out.inliers, 0, static_cast<size_t>(n));
  *out.score = 0.0f;
  *out.ok = 0;
  if (out.status) *out.status = item_status;
}

// One batch item: pointers are already offset to item b.
void RansacPnpItem(const float* pixels, const float* coords, const float* K, const float* weights,
                   const uint8_t* valid, int n, int num_hypotheses, float threshold_px, int max_refine_iterations,
                   uint64_t seed, int64_t item, const ItemOutputs& out) {
  Camera cam;
  Correspondences c;
  const int status = PrepareItem(pixels, coords, K, weights, valid, n, &cam, &c);
  if (status != RP_ITEM_OK) return WriteFailure(out, n, status);

  // Sampling and scoring: the best of num_hypotheses hypotheses (first one wins ties).
  Rng rng(seed, item);
  std::vector<Hypothesis> hypotheses;
  std::vector<uint8_t> made;
  if (GenerateHypotheses(c, cam, threshold_px, num_hypotheses, &rng, &hypotheses, &made) == 0)
    return WriteFailure(out, n, RP_ITEM_NO_HYPOTHESIS);
  int best = -1;
  for (int j = 0; j < num_hypotheses; ++j)
    if (made[j] && (best < 0 || hypotheses[j].score > hypotheses[best].score)) best = j;

  // Refinement.
  Pose pose = hypotheses[best].pose;
  RefinePose(c, cam, threshold_px, max_refine_iterations, &pose);

  std::vector<int> inlier_positions;
  InlierPositions(c, cam, pose, threshold_px, &inlier_positions);
  for (int k = 0; k < 9; ++k) out.R[k] = static_cast<float>(pose.R[k]);
  for (int k = 0; k < 3; ++k) out.t[k] = static_cast<float>(pose.t[k]);
  std::memset(out.inliers, 0, static_cast<size_t>(n));
  for (int p : inlier_positions) out.inliers[c.index[p]] = 1;
  *out.score = static_cast<float>(ScorePose(c, cam, pose, threshold_px));
  *out.ok = 1;
  if (out.status) *out.status = RP_ITEM_OK;
}

// Outputs of one item of the training form, [H, ...] (offset to the item).
struct HypothesesOutputs {
  float* R;
  float* t;
  float* score;
  int32_t* minimal_sets;
  uint8_t* ok;
  float* R_init;
  float* t_init;
  int32_t* status;
};

void WritePose(const Pose& pose, float* R, float* t) {
  for (int k = 0; k < 9; ++k) R[k] = static_cast<float>(pose.R[k]);
  for (int k = 0; k < 3; ++k) t[k] = static_cast<float>(pose.t[k]);
}

// One batch item of the training form: every hypothesis, its score (of the minimal-solver pose) and its refined pose.
void HypothesesItem(const float* pixels, const float* coords, const float* K, const float* weights,
                    const uint8_t* valid, int n, int num_hypotheses, float threshold_px, int max_refine_iterations,
                    int max_refine_points, uint64_t seed, int64_t item, const HypothesesOutputs& out) {
  // Hypotheses that could not be made: identity, zero translation and score, minimal set -1, ok 0.
  const Pose identity;
  for (int j = 0; j < num_hypotheses; ++j) {
    WritePose(identity, out.R + 9 * j, out.t + 3 * j);
    WritePose(identity, out.R_init + 9 * j, out.t_init + 3 * j);
    out.score[j] = 0.0f;
    for (int k = 0; k < RP_MINIMAL_SET_SIZE; ++k) out.minimal_sets[RP_MINIMAL_SET_SIZE * j + k] = -1;
    out.ok[j] = 0;
  }
  Camera cam;
  Correspondences c;
  int status = PrepareItem(pixels, coords, K, weights, valid, n, &cam, &c);
  if (status == RP_ITEM_OK) {
    Rng rng(seed, item);
    std::vector<Hypothesis> hypotheses;
    std::vector<uint8_t> made;
    if (GenerateHypotheses(c, cam, threshold_px, num_hypotheses, &rng, &hypotheses, &made) == 0)
      status = RP_ITEM_NO_HYPOTHESIS;
    std::vector<int> candidates;
    const bool capped = RefinementCandidates(c, max_refine_points, &candidates);
    for (int j = 0; j < num_hypotheses && status == RP_ITEM_OK; ++j) {
      if (!made[j]) continue;
      const Hypothesis& h = hypotheses[j];
      Pose pose = h.pose;
      RefinePose(c, cam, threshold_px, max_refine_iterations, &pose, capped ? &candidates : nullptr);
      WritePose(pose, out.R + 9 * j, out.t + 3 * j);
      WritePose(h.pose, out.R_init + 9 * j, out.t_init + 3 * j);
      out.score[j] = static_cast<float>(h.score);
      for (int k = 0; k < RP_MINIMAL_SET_SIZE; ++k)
        out.minimal_sets[RP_MINIMAL_SET_SIZE * j + k] = c.index[h.minimal_set[k]];
      out.ok[j] = 1;
    }
  }
  if (out.status) *out.status = status;
}

// Checks shared by the calls: sizes, parameters, and (before any item is written) K finite and weights finite and
// >= 0 on the items [batch_begin, batch_end). RP_OK or RP_ERR_INVALID_ARGUMENT.
int CheckBatch(const float* K, const float* weights, int batch, int n, int num_hypotheses, float threshold_px,
               int max_refine_iterations, int batch_begin, int batch_end) {
  if (batch < 0 || n < 0 || batch_begin < 0 || batch_end < batch_begin || batch_end > batch)
    return RP_ERR_INVALID_ARGUMENT;
  if (rp_check_parameters(num_hypotheses, threshold_px, max_refine_iterations) != RP_OK) return RP_ERR_INVALID_ARGUMENT;
  if (batch_end == batch_begin) return RP_OK;
  if (!K) return RP_ERR_INVALID_ARGUMENT;
  const size_t nn = static_cast<size_t>(n);
  for (int b = batch_begin; b < batch_end; ++b) {
    for (int k = 0; k < 9; ++k)
      if (!std::isfinite(K[9 * static_cast<size_t>(b) + k])) return RP_ERR_INVALID_ARGUMENT;
    if (weights)
      for (size_t i = 0; i < nn; ++i) {
        const float w = weights[b * nn + i];
        if (!(w >= 0.0f) || !std::isfinite(w)) return RP_ERR_INVALID_ARGUMENT;
      }
  }
  return RP_OK;
}

}  // namespace
}  // namespace ransac_pnp
}  // namespace synthpose

using synthpose::ransac_pnp::Camera;
using synthpose::ransac_pnp::MakeCamera;
using synthpose::ransac_pnp::Pose;

extern "C" {

const char* rp_error_string(int code) {
  switch (code) {
    case RP_OK:
      return "ok";
    case RP_ERR_INVALID_ARGUMENT:
      return "invalid argument (sizes, parameters, NULL arrays, non-finite K, or a negative/non-finite weight)";
    default:
      return "unknown error code";
  }
}

const char* rp_item_status_string(int status) {
  switch (status) {
    case RP_ITEM_OK:
      return "ok";
    case RP_ITEM_TOO_FEW_POINTS:
      return "fewer than 4 valid, finite correspondences with weight > 0";
    case RP_ITEM_SINGULAR_K:
      return "K is singular";
    case RP_ITEM_COLLINEAR_POINTS:
      return "the 3D coordinates of the sampleable correspondences are collinear";
    case RP_ITEM_NO_HYPOTHESIS:
      return "no minimal set of 4 correspondences agreed on a pose";
    default:
      return "unknown item status";
  }
}

int rp_check_parameters(int num_hypotheses, float threshold_px, int max_refine_iterations) {
  if (num_hypotheses < 1 || num_hypotheses > RP_MAX_HYPOTHESES) return RP_ERR_INVALID_ARGUMENT;
  if (!(threshold_px > 0.0f) || !std::isfinite(threshold_px)) return RP_ERR_INVALID_ARGUMENT;
  if (max_refine_iterations < 0 || max_refine_iterations > RP_MAX_REFINE_ITERATIONS) return RP_ERR_INVALID_ARGUMENT;
  return RP_OK;
}

int rp_cpu_ransac_pnp(const float* pixels, const float* coords_mm, const float* K, const float* weights,
                      const uint8_t* valid, int batch, int n, int num_hypotheses, float threshold_px,
                      int max_refine_iterations, uint64_t seed, float* R, float* t_mm, uint8_t* inliers, float* score,
                      uint8_t* ok, int32_t* item_status, int batch_begin, int batch_end) {
  // [B, N] arrays may be NULL when N = 0 (an empty tensor has no buffer).
  const bool empty = batch_end == batch_begin;
  if (!empty && (!R || !t_mm || !score || !ok || (n > 0 && (!pixels || !coords_mm || !inliers))))
    return RP_ERR_INVALID_ARGUMENT;
  // Malformed data is rejected before any item is written.
  const int rc = synthpose::ransac_pnp::CheckBatch(K, weights, batch, n, num_hypotheses, threshold_px,
                                                   max_refine_iterations, batch_begin, batch_end);
  if (rc != RP_OK || empty) return rc;
  const size_t nn = static_cast<size_t>(n);
  for (int b = batch_begin; b < batch_end; ++b) {
    const size_t bb = static_cast<size_t>(b);
    const synthpose::ransac_pnp::ItemOutputs out{R + 9 * bb, t_mm + 3 * bb, inliers + bb * nn, score + bb, ok + bb,
                                                 item_status ? item_status + bb : nullptr};
    synthpose::ransac_pnp::RansacPnpItem(pixels + 2 * bb * nn, coords_mm + 3 * bb * nn, K + 9 * bb,
                                         weights ? weights + bb * nn : nullptr, valid ? valid + bb * nn : nullptr, n,
                                         num_hypotheses, threshold_px, max_refine_iterations, seed, b, out);
  }
  return RP_OK;
}

int rp_cpu_ransac_pnp_hypotheses(const float* pixels, const float* coords_mm, const float* K, const float* weights,
                                 const uint8_t* valid, int batch, int n, int num_hypotheses, float threshold_px,
                                 int max_refine_iterations, int max_refine_points, uint64_t seed, float* R,
                                 float* t_mm, float* score, int32_t* minimal_sets, uint8_t* ok, float* R_init,
                                 float* t_init_mm, int32_t* item_status, int batch_begin, int batch_end) {
  if (max_refine_points < 0) return RP_ERR_INVALID_ARGUMENT;
  const bool empty = batch_end == batch_begin;
  if (!empty && (!R || !t_mm || !score || !minimal_sets || !ok || !R_init || !t_init_mm ||
                 (n > 0 && (!pixels || !coords_mm))))
    return RP_ERR_INVALID_ARGUMENT;
  const int rc = synthpose::ransac_pnp::CheckBatch(K, weights, batch, n, num_hypotheses, threshold_px,
                                                   max_refine_iterations, batch_begin, batch_end);
  if (rc != RP_OK || empty) return rc;
  const size_t nn = static_cast<size_t>(n), h = static_cast<size_t>(num_hypotheses);
  for (int b = batch_begin; b < batch_end; ++b) {
    const size_t bb = static_cast<size_t>(b);
    const synthpose::ransac_pnp::HypothesesOutputs out{
        R + 9 * bb * h,      t_mm + 3 * bb * h,      score + bb * h,
        minimal_sets + RP_MINIMAL_SET_SIZE * bb * h, ok + bb * h, R_init + 9 * bb * h,
        t_init_mm + 3 * bb * h, item_status ? item_status + bb : nullptr};
    synthpose::ransac_pnp::HypothesesItem(pixels + 2 * bb * nn, coords_mm + 3 * bb * nn, K + 9 * bb,
                                          weights ? weights + bb * nn : nullptr, valid ? valid + bb * nn : nullptr,
                                          n, num_hypotheses, threshold_px, max_refine_iterations, max_refine_points,
                                          seed, b, out);
  }
  return RP_OK;
}

int rp_cpu_ransac_pnp_hypotheses_backward(const float* pixels, const float* coords_mm, const float* K,
                                          const uint8_t* valid, int batch, int n, int num_hypotheses,
                                          float threshold_px, int max_refine_iterations, int max_refine_points,
                                          const float* R, const float* t_mm, const float* R_init,
                                          const float* t_init_mm, const int32_t* minimal_sets, const uint8_t* ok,
                                          const float* grad_R, const float* grad_t_mm, const float* grad_score,
                                          const float* grad_R_init, const float* grad_t_init_mm,
                                          float* grad_coords_mm, int batch_begin, int batch_end) {
  if (max_refine_points < 0) return RP_ERR_INVALID_ARGUMENT;
  const bool empty = batch_end == batch_begin;
  if (!empty && (!R || !t_mm || !R_init || !t_init_mm || !minimal_sets || !ok ||
                 (n > 0 && (!pixels || !coords_mm || !grad_coords_mm))))
    return RP_ERR_INVALID_ARGUMENT;
  const int rc = synthpose::ransac_pnp::CheckBatch(K, nullptr, batch, n, num_hypotheses, threshold_px,
                                                   max_refine_iterations, batch_begin, batch_end);
  if (rc != RP_OK || empty) return rc;
  const size_t nn = static_cast<size_t>(n), h = static_cast<size_t>(num_hypotheses);
  // The minimal sets of ok hypotheses must be 4 distinct indices in [0, N) (checked before anything is written).
  for (size_t j = static_cast<size_t>(batch_begin) * h; j < static_cast<size_t>(batch_end) * h; ++j) {
    if (!ok[j]) continue;
    const int32_t* set = minimal_sets + RP_MINIMAL_SET_SIZE * j;
    for (int k = 0; k < RP_MINIMAL_SET_SIZE; ++k) {
      if (set[k] < 0 || set[k] >= n) return RP_ERR_INVALID_ARGUMENT;
      for (int l = 0; l < k; ++l)
        if (set[l] == set[k]) return RP_ERR_INVALID_ARGUMENT;
    }
  }
  std::vector<double> grad;
  for (int b = batch_begin; b < batch_end; ++b) {
    const size_t bb = static_cast<size_t>(b);
    float* out = grad_coords_mm + 3 * bb * nn;
    for (size_t k = 0; k < 3 * nn; ++k) out[k] = 0.0f;
    Camera cam;
    if (!MakeCamera(K + 9 * bb, &cam)) continue;  // no hypothesis: ok is all false
    synthpose::ransac_pnp::Correspondences c;
    synthpose::ransac_pnp::CollectCorrespondences(pixels + 2 * bb * nn, coords_mm + 3 * bb * nn, nullptr,
                                                  valid ? valid + bb * nn : nullptr, n, cam, &c);
    const auto at = [&](const auto* p, size_t per) { return p ? p + per * bb * h : nullptr; };
    const synthpose::ransac_pnp::HypothesesBackwardInput in{
        at(R, 9), at(t_mm, 3), at(R_init, 9), at(t_init_mm, 3), at(minimal_sets, RP_MINIMAL_SET_SIZE), at(ok, 1),
        at(grad_R, 9), at(grad_t_mm, 3), at(grad_score, 1), at(grad_R_init, 9), at(grad_t_init_mm, 3)};
    std::vector<int> candidates;
    const bool capped = synthpose::ransac_pnp::RefinementCandidates(c, max_refine_points, &candidates);
    synthpose::ransac_pnp::HypothesesBackward(c, cam, threshold_px, max_refine_iterations > 0, num_hypotheses, in,
                                              &grad, capped ? &candidates : nullptr);
    // Never a NaN or inf in the gradient: such an entry is 0.
    for (size_t p = 0; p < c.size(); ++p)
      for (int k = 0; k < 3; ++k) {
        const float g = static_cast<float>(grad[3 * p + k]);
        out[3 * static_cast<size_t>(c.index[p]) + k] = std::isfinite(g) ? g : 0.0f;
      }
  }
  return RP_OK;
}

int rp_p3p(const float* pixels, const float* coords_mm, const float* K, float* R_out, float* t_out_mm) {
  if (!pixels || !coords_mm || !K || !R_out || !t_out_mm) return RP_ERR_INVALID_ARGUMENT;
  Camera cam;
  if (!MakeCamera(K, &cam)) return RP_ERR_INVALID_ARGUMENT;
  double bearings[3][3], points[3][3];
  for (int i = 0; i < 3; ++i) {
    if (!synthpose::ransac_pnp::Bearing(cam, pixels[2 * i], pixels[2 * i + 1], bearings[i]))
      return RP_ERR_INVALID_ARGUMENT;
    for (int r = 0; r < 3; ++r) points[i][r] = coords_mm[3 * i + r];
  }
  Pose poses[4];
  const int count = synthpose::ransac_pnp::SolveP3P(bearings, points, poses);
  for (int s = 0; s < count; ++s) {
    for (int k = 0; k < 9; ++k) R_out[9 * s + k] = static_cast<float>(poses[s].R[k]);
    for (int k = 0; k < 3; ++k) t_out_mm[3 * s + k] = static_cast<float>(poses[s].t[k]);
  }
  return count;
}

}  // extern "C"
