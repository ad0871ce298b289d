// Sampling: the per-item random generator, weighted minimal sets, and hypotheses from P3P + a 4th-point check.
#include <algorithm>
#include <cmath>
#include <limits>

#include "tf_ops/ransac_pnp/core/ransac_pnp_internal.h"

namespace synthpose {
namespace ransac_pnp {
namespace {

// Draws allowed to collect RP_MINIMAL_SET_SIZE distinct correspondences (duplicates are re-drawn). With 4 of N
// equally likely points this almost never matters; it bounds the loop when the weights sit on ~4 points.
constexpr int kMaxDrawsPerMinimalSet = 64;
// Sampleable model points count as collinear when every one is within this fraction of their extent (the largest
// distance from their centroid) of the line through the centroid and the farthest point.
constexpr double kCollinearRelTol = 1e-5;
// splitmix64 constants (Steele, Lea, Flood 2014) to turn (seed, item) into a well-mixed nonzero generator state.
constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ULL;
// xorshift64* output multiplier (Vigna 2016).
constexpr uint64_t kXorshiftMultiplier = 0x2545F4914F6CDD1DULL;
// 2^-53: turns the top 53 random bits into a double in [0, 1).
constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;

uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + kGoldenGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// One sampleable position, in proportion to the weights (uniform when `cumulative` is empty).
int DrawOne(const Correspondences& c, Rng* rng) {
  const int m = static_cast<int>(c.sampleable.size());
  int k;
  if (c.cumulative.empty()) {
    k = static_cast<int>(rng->Uniform() * m);
  } else {
    const double r = rng->Uniform() * c.cumulative.back();
    k = static_cast<int>(std::upper_bound(c.cumulative.begin(), c.cumulative.end(), r) - c.cumulative.begin());
  }
  return c.sampleable[std::min(std::max(k, 0), m - 1)];
}

}  // namespace

Rng::Rng(uint64_t seed, int64_t item) {
  state_ = SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(item)));
  if (state_ == 0) state_ = kGoldenGamma;  // xorshift's one forbidden state
}

uint64_t Rng::Next() {
  uint64_t x = state_;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  state_ = x;
  return x * kXorshiftMultiplier;
}

double Rng::Uniform() { return static_cast<double>(Next() >> 11) * kTwoToMinus53; }

bool DrawMinimalSet(const Correspondences& c, Rng* rng, int out[RP_MINIMAL_SET_SIZE]) {
  int have = 0;
  for (int draw = 0; draw < kMaxDrawsPerMinimalSet && have < RP_MINIMAL_SET_SIZE; ++draw) {
    const int p = DrawOne(c, rng);
    bool duplicate = false;
    for (int i = 0; i < have; ++i) duplicate = duplicate || out[i] == p;
    if (!duplicate) out[have++] = p;
  }
  return have == RP_MINIMAL_SET_SIZE;
}

void MinimalSetGeometry(const Correspondences& c, const int set[RP_MINIMAL_SET_SIZE], double bearings[3][3],
                        double points[RP_MINIMAL_SET_SIZE][3]) {
  for (int i = 0; i < RP_MINIMAL_SET_SIZE; ++i) {
    const int p = set[i];
    if (i < 3) {
      bearings[i][0] = c.bx[p];
      bearings[i][1] = c.by[p];
      bearings[i][2] = c.bz[p];
    }
    points[i][0] = c.x[p];
    points[i][1] = c.y[p];
    points[i][2] = c.z[p];
  }
}

bool SolveMinimalSet(const Camera& cam, const double bearings[3][3], const double points[RP_MINIMAL_SET_SIZE][3],
                     double u4, double v4, Pose* pose, double* error4_px) {
  Pose candidates[4];
  const int n_poses = SolveP3P(bearings, points, candidates);
  // The 4th point picks the solution that reprojects it best.
  int best = -1;
  double best_error = std::numeric_limits<double>::infinity();
  for (int s = 0; s < n_poses; ++s) {
    const double e = ReprojectionErrorPx(cam, candidates[s], points[3], u4, v4);
    if (e < best_error) {
      best_error = e;
      best = s;
    }
  }
  if (best < 0) return false;
  *pose = candidates[best];
  *error4_px = best_error;
  return true;
}

bool GenerateHypothesis(const Correspondences& c, const Camera& cam, double threshold_px, Rng* rng, Hypothesis* h) {
  int set[RP_MINIMAL_SET_SIZE];
  for (int attempt = 0; attempt < RP_MAX_SAMPLE_TRIES; ++attempt) {
    if (!DrawMinimalSet(c, rng, set)) continue;
    double bearings[3][3], points[RP_MINIMAL_SET_SIZE][3];
    MinimalSetGeometry(c, set, bearings, points);
    Pose pose;
    double error4 = 0.0;
    if (!SolveMinimalSet(cam, bearings, points, c.u[set[3]], c.v[set[3]], &pose, &error4) ||
        !(error4 < threshold_px))
      continue;
    // All four points of the set must agree with the pose (the three P3P points can fail through rounding or a
    // point behind the camera).
    bool consistent = true;
    for (int i = 0; i < 3 && consistent; ++i)
      consistent = ReprojectionErrorPx(cam, pose, points[i], c.u[set[i]], c.v[set[i]]) < threshold_px;
    if (!consistent) continue;
    h->pose = pose;
    for (int i = 0; i < RP_MINIMAL_SET_SIZE; ++i) h->minimal_set[i] = set[i];
    return true;
  }
  return false;
}

int GenerateHypotheses(const Correspondences& c, const Camera& cam, float threshold_px, int num_hypotheses, Rng* rng,
                       std::vector<Hypothesis>* hypotheses, std::vector<uint8_t>* made) {
  hypotheses->assign(static_cast<size_t>(num_hypotheses), Hypothesis());
  made->assign(static_cast<size_t>(num_hypotheses), 0);
  int count = 0;
  for (int j = 0; j < num_hypotheses; ++j) {
    Hypothesis& h = (*hypotheses)[j];
    if (!GenerateHypothesis(c, cam, threshold_px, rng, &h)) continue;
    h.score = ScorePose(c, cam, h.pose, threshold_px);
    (*made)[j] = 1;
    ++count;
  }
  return count;
}

bool SampleablePointsCollinear(const Correspondences& c) {
  const size_t m = c.sampleable.size();
  if (m == 0) return true;
  double centroid[3] = {0, 0, 0};
  for (int p : c.sampleable) {
    centroid[0] += c.x[p];
    centroid[1] += c.y[p];
    centroid[2] += c.z[p];
  }
  for (double& v : centroid) v /= static_cast<double>(m);
  double far[3] = {0, 0, 0}, far_d2 = 0.0;
  for (int p : c.sampleable) {
    const double d[3] = {c.x[p] - centroid[0], c.y[p] - centroid[1], c.z[p] - centroid[2]};
    const double d2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
    if (d2 > far_d2) {
      far_d2 = d2;
      far[0] = d[0];
      far[1] = d[1];
      far[2] = d[2];
    }
  }
  const double extent = std::sqrt(far_d2);
  if (!(extent > 0.0)) return true;  // all points coincide
  const double dir[3] = {far[0] / extent, far[1] / extent, far[2] / extent};
  const double limit2 = (kCollinearRelTol * extent) * (kCollinearRelTol * extent);
  for (int p : c.sampleable) {
    const double d[3] = {c.x[p] - centroid[0], c.y[p] - centroid[1], c.z[p] - centroid[2]};
    const double along = d[0] * dir[0] + d[1] * dir[1] + d[2] * dir[2];
    const double perp[3] = {d[0] - along * dir[0], d[1] - along * dir[1], d[2] - along * dir[2]};
    if (perp[0] * perp[0] + perp[1] * perp[1] + perp[2] * perp[2] > limit2) return false;
  }
  return true;
}

}  // namespace ransac_pnp
}  // namespace synthpose
