// Scoring: reprojection errors, the soft inlier count of DSAC*, and inlier sets.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "tf_ops/ransac_pnp/core/ransac_pnp_internal.h"

namespace synthpose {
namespace ransac_pnp {
namespace {

// kSigmoidCutoff (ransac_pnp_internal.h): arguments below -30 contribute 0, above +30 count as sigmoid(30).

// Points per block of the scoring loop (a stack buffer of per-point contributions), and the number of partial sums
// that add them up (independent lanes, so the sum vectorizes without reassociating floats).
constexpr int kScoreChunk = 256;
constexpr int kScoreLanes = 8;

// exp(x) for |x| <= kSigmoidCutoff, branch-free (vectorizable, unlike std::exp without -ffast-math): x log2(e) =
// n + f with f in [-0.5, 0.5), 2^f = e^(f ln 2) by its Taylor polynomial of degree 7 (relative error < 1e-8, below
// float resolution), 2^n by writing the exponent bits.
constexpr float kLog2E = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;
// Shift that makes x log2(e) + 0.5 positive before truncation, so truncation rounds to nearest (|x log2 e| < 64).
constexpr int kRoundingShift = 64;
inline float ExpOfBoundedArgument(float x) {
  const float y = x * kLog2E;
  const int n = static_cast<int>(y + (kRoundingShift + 0.5f)) - kRoundingShift;
  const float g = (y - static_cast<float>(n)) * kLn2;
  float p = 1.0f / 5040.0f;
  p = p * g + 1.0f / 720.0f;
  p = p * g + 1.0f / 120.0f;
  p = p * g + 1.0f / 24.0f;
  p = p * g + 1.0f / 6.0f;
  p = p * g + 0.5f;
  p = p * g + 1.0f;
  p = p * g + 1.0f;
  const int32_t bits = (n + 127) << 23;  // 2^n, n in [-44, 44]: a normal float
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// The pose premultiplied by K, float: p = M X + m (homogeneous pixel), camera depth = R_2 . X + t_2.
struct ProjectionF {
  float M[9], m[3], r2[3], t2;
};

ProjectionF MakeProjection(const Camera& cam, const Pose& pose) {
  ProjectionF P;
  for (int r = 0; r < 3; ++r) {
    for (int k = 0; k < 3; ++k)
      P.M[3 * r + k] = static_cast<float>(cam.K[3 * r + 0] * pose.R[k] + cam.K[3 * r + 1] * pose.R[3 + k] +
                                          cam.K[3 * r + 2] * pose.R[6 + k]);
    P.m[r] = static_cast<float>(cam.K[3 * r + 0] * pose.t[0] + cam.K[3 * r + 1] * pose.t[1] +
                                cam.K[3 * r + 2] * pose.t[2]);
    P.r2[r] = static_cast<float>(pose.R[6 + r]);
  }
  P.t2 = static_cast<float>(pose.t[2]);
  return P;
}

// Reprojection error (px) of correspondence i; +infinity behind the camera.
inline float ErrorPx(const ProjectionF& P, const Correspondences& c, size_t i) {
  const float x = c.x[i], y = c.y[i], z = c.z[i];
  const float depth = P.r2[0] * x + P.r2[1] * y + P.r2[2] * z + P.t2;
  if (!(depth > static_cast<float>(RP_MIN_DEPTH_MM))) return std::numeric_limits<float>::infinity();
  const float px = P.M[0] * x + P.M[1] * y + P.M[2] * z + P.m[0];
  const float py = P.M[3] * x + P.M[4] * y + P.M[5] * z + P.m[1];
  const float pz = P.M[6] * x + P.M[7] * y + P.M[8] * z + P.m[2];
  const float du = px / pz - c.u[i], dv = py / pz - c.v[i];
  const float e = std::sqrt(du * du + dv * dv);
  return std::isfinite(e) ? e : std::numeric_limits<float>::infinity();
}

}  // namespace

double ReprojectionErrorPx(const Camera& cam, const Pose& pose, const double X[3], double u, double v) {
  double Xc[3];
  for (int r = 0; r < 3; ++r)
    Xc[r] = pose.R[3 * r] * X[0] + pose.R[3 * r + 1] * X[1] + pose.R[3 * r + 2] * X[2] + pose.t[r];
  if (!(Xc[2] > RP_MIN_DEPTH_MM)) return std::numeric_limits<double>::infinity();
  double p[3];
  for (int r = 0; r < 3; ++r) p[r] = cam.K[3 * r] * Xc[0] + cam.K[3 * r + 1] * Xc[1] + cam.K[3 * r + 2] * Xc[2];
  const double du = p[0] / p[2] - u, dv = p[1] / p[2] - v;
  const double e = std::sqrt(du * du + dv * dv);
  return std::isfinite(e) ? e : std::numeric_limits<double>::infinity();
}

double ScorePose(const Correspondences& c, const Camera& cam, const Pose& pose, float threshold_px) {
  const ProjectionF P = MakeProjection(cam, pose);
  const float beta = RP_SCORE_BETA_TIMES_TAU / threshold_px;
  const float min_depth = static_cast<float>(RP_MIN_DEPTH_MM);
  const float* xs = c.x.data();
  const float* ys = c.y.data();
  const float* zs = c.z.data();
  const float* us = c.u.data();
  const float* vs = c.v.data();
  const size_t n = c.size();
  float contribution[kScoreChunk];
  float lanes[kScoreLanes] = {0};
  double total = 0.0;
  for (size_t begin = 0; begin < n; begin += kScoreChunk) {
    const int m = static_cast<int>(std::min(n - begin, static_cast<size_t>(kScoreChunk)));
    // Branch-free so that the compiler vectorizes it (baseline SSE2 is enough).
    for (int k = 0; k < m; ++k) {
      const size_t i = begin + k;
      const float x = xs[i], y = ys[i], z = zs[i];
      const float depth = P.r2[0] * x + P.r2[1] * y + P.r2[2] * z + P.t2;
      const float px = P.M[0] * x + P.M[1] * y + P.M[2] * z + P.m[0];
      const float py = P.M[3] * x + P.M[4] * y + P.M[5] * z + P.m[1];
      const float pz = P.M[6] * x + P.M[7] * y + P.M[8] * z + P.m[2];
      const float inv_pz = 1.0f / pz;
      const float du = px * inv_pz - us[i], dv = py * inv_pz - vs[i];
      const float arg = beta * (threshold_px - std::sqrt(du * du + dv * dv));
      const bool counts = (depth > min_depth) & (arg > -kSigmoidCutoff);  // false for NaN
      float a = counts ? arg : 0.0f;
      a = a < kSigmoidCutoff ? a : kSigmoidCutoff;
      const float s = 1.0f / (1.0f + ExpOfBoundedArgument(-a));
      contribution[k] = counts ? s : 0.0f;
    }
    int k = 0;
    for (; k + kScoreLanes <= m; k += kScoreLanes)
      for (int j = 0; j < kScoreLanes; ++j) lanes[j] += contribution[k + j];
    for (; k < m; ++k) lanes[0] += contribution[k];
    for (int j = 0; j < kScoreLanes; ++j) {
      total += lanes[j];
      lanes[j] = 0.0f;
    }
  }
  return total;
}

void InlierPositions(const Correspondences& c, const Camera& cam, const Pose& pose, float threshold_px,
                     std::vector<int>* positions) {
  const ProjectionF P = MakeProjection(cam, pose);
  positions->clear();
  const size_t n = c.size();
  for (size_t i = 0; i < n; ++i)
    if (ErrorPx(P, c, i) < threshold_px) positions->push_back(static_cast<int>(i));
}

void InlierPositionsAmong(const Correspondences& c, const Camera& cam, const Pose& pose, float threshold_px,
                          const std::vector<int>& candidates, std::vector<int>* positions) {
  const ProjectionF P = MakeProjection(cam, pose);
  positions->clear();
  for (int i : candidates)
    if (ErrorPx(P, c, static_cast<size_t>(i)) < threshold_px) positions->push_back(i);
}

}  // namespace ransac_pnp
}  // namespace synthpose
