// Internal C++ interface between the parts of the RANSAC-PnP core (not part of the C ABI):
//   p3p.cc         minimal solver (3 points -> up to 4 poses) and pose-from-triangles
//   sampling.cc    per-item random generator, weighted minimal sets, hypothesis generation
//   scoring.cc     reprojection errors, soft inlier score, inlier sets
//   refinement.cc  Levenberg-Marquardt on the inliers, repeated while the inlier set grows
//   ransac_pnp_core.cc  input checks, per-item driver, the C ABI
//
// Derivatives (DSAC, a later change): the expected task loss of DSAC needs d score_j / d pixels and
// d pose_j / d pixels per hypothesis j. They belong in a new derivatives.cc next to scoring.cc and refinement.cc:
// ScorePose's per-point sigmoid terms and RefinePose's Jacobian (RefineOnce builds J^T J and J^T r) are what the
// backward pass differentiates, and Hypothesis already keeps the minimal set that produced each pose. The C ABI would
// gain an rp_cpu_ransac_pnp_backward beside rp_cpu_ransac_pnp; nothing here needs to change shape for it.
#ifndef SYNTHPOSE_RANSAC_PNP_INTERNAL_H_
#define SYNTHPOSE_RANSAC_PNP_INTERNAL_H_

#include <cstdint>
#include <vector>

#include "tf_ops/ransac_pnp/core/ransac_pnp_core.h"

namespace synthpose {
namespace ransac_pnp {

// Pose X_cam = R X + t (R row-major, t in mm), double precision.
struct Pose {
  double R[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  double t[3] = {0, 0, 0};
};

// The used correspondences of one item in structure-of-arrays form (float: the scoring loop is the hot path).
struct Correspondences {
  std::vector<int> index;             // position in the item's [N] arrays
  std::vector<float> u, v;            // pixel (px)
  std::vector<float> x, y, z;         // model coordinates (mm)
  std::vector<double> bx, by, bz;     // unit bearing K^-1 (u, v, 1) / |.| (for P3P)
  std::vector<int> sampleable;        // positions (into the arrays above) with weight > 0
  std::vector<double> cumulative;     // cumulative weights of `sampleable` (weighted draws); empty: uniform
  size_t size() const { return index.size(); }
};

// One RANSAC hypothesis: its pose, soft score and the minimal set (positions into Correspondences) it came from.
struct Hypothesis {
  Pose pose;
  double score = 0.0;
  int minimal_set[RP_MINIMAL_SET_SIZE] = {0, 0, 0, 0};
};

// Intrinsics and their inverse, double.
struct Camera {
  double K[9];
  double K_inv[9];
};

// ---- ransac_pnp_core.cc
// Fills cam from a row-major float K; false when K is singular (RP_ITEM_SINGULAR_K) or not finite.
bool MakeCamera(const float* K, Camera* cam);

// ---- p3p.cc
// Bearing-based P3P: bearings[i] (unit vectors in the camera frame) see model points points[i] (mm). Writes up to 4
// poses, returns how many. Returns 0 for a degenerate triangle (collinear or coincident model points).
int SolveP3P(const double bearings[3][3], const double points[3][3], Pose poses[4]);
// The pose mapping the triangle model[0..2] onto the triangle camera[0..2] (both non-degenerate, same shape).
bool PoseFromTriangles(const double model[3][3], const double camera[3][3], Pose* pose);
// Real roots of sum_k coeffs[k] x^k (degree <= 4) into roots (sorted ascending); returns how many.
int RealPolynomialRoots(const double* coeffs, int degree, double* roots);

// ---- sampling.cc
// xorshift64* generator: small, fast, and identical on every platform.
class Rng {
 public:
  Rng(uint64_t seed, int64_t item);
  uint64_t Next();
  double Uniform();  // [0, 1)
 private:
  uint64_t state_;
};
// Draws RP_MINIMAL_SET_SIZE distinct sampleable positions (in proportion to the weights); false when a distinct set
// was not found within kMaxDrawsPerMinimalSet draws (sampling.cc; weights concentrated on too few points).
bool DrawMinimalSet(const Correspondences& c, Rng* rng, int out[RP_MINIMAL_SET_SIZE]);
// Draws minimal sets until one passes the 4-point check (at most RP_MAX_SAMPLE_TRIES); false when none did.
bool GenerateHypothesis(const Correspondences& c, const Camera& cam, double threshold_px, Rng* rng, Hypothesis* h);
// True when the sampleable model points are (nearly) collinear, so no pose is determined.
bool SampleablePointsCollinear(const Correspondences& c);

// ---- scoring.cc
// Reprojection error (px) of model point X under pose; +infinity when the camera z is <= RP_MIN_DEPTH_MM.
double ReprojectionErrorPx(const Camera& cam, const Pose& pose, const double X[3], double u, double v);
// Soft inlier count sum_i sigmoid(beta (tau - e_i)) over all used correspondences.
double ScorePose(const Correspondences& c, const Camera& cam, const Pose& pose, float threshold_px);
// Positions of the correspondences with e_i < threshold_px (in front of the camera).
void InlierPositions(const Correspondences& c, const Camera& cam, const Pose& pose, float threshold_px,
                     std::vector<int>* positions);

// ---- refinement.cc
// Refines pose in place: Levenberg-Marquardt on the inliers, repeated while the inlier set grows, at most
// max_iterations rounds. Returns the number of rounds run.
int RefinePose(const Correspondences& c, const Camera& cam, float threshold_px, int max_iterations, Pose* pose);

}  // namespace ransac_pnp
}  // namespace synthpose

#endif  // SYNTHPOSE_RANSAC_PNP_INTERNAL_H_
