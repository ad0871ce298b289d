// Internal C++ interface between the parts of the RANSAC-PnP core (not part of the C ABI):
//   p3p.cc         minimal solver (3 points -> up to 4 poses) and pose-from-triangles
//   sampling.cc    per-item random generator, weighted minimal sets, hypothesis generation
//   scoring.cc     reprojection errors, soft inlier score, inlier sets
//   refinement.cc  Levenberg-Marquardt on the inliers, repeated while the inlier set grows
//   ransac_pnp_core.cc  input checks, per-item drivers (inference and training form), the C ABI
//   derivatives.cc the training form's backward: d L / d coords_mm through every hypothesis' refined pose
//                  (implicit function theorem), its soft score and its minimal solver (central differences)
//
// The training form (rp_cpu_ransac_pnp_hypotheses) keeps every hypothesis that GenerateHypotheses makes, refined;
// rp_cpu_ransac_pnp_hypotheses_backward (derivatives.cc's HypothesesBackward per item) differentiates ScorePose's
// per-point sigmoid terms, the least-squares optimum RefinePose reaches (the same residual Jacobian as its
// normal equations, ProjectWithDerivatives) and SolveMinimalSet. docs/ransac_pnp.md, "Training form (DSAC)".
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

// Soft-score sigmoid arguments beta (tau - e) below -kSigmoidCutoff contribute 0 (sigmoid(-30) ~ 1e-13, far below
// float resolution of any score >= 1e-6), and arguments above it count as exactly sigmoid(kSigmoidCutoff); used by
// ScorePose (skips the exp for points far outside the threshold, e > 7 tau) and by its derivative (zero there).
constexpr float kSigmoidCutoff = 30.0f;

// Intrinsics and their inverse, double.
struct Camera {
  double K[9];
  double K_inv[9];
};

// Projection of one model point with the derivatives that refinement and the backward need: a = R X, camera point
// Xc = a + t, homogeneous pixel p = K Xc, (u, v) = (p0 / p2, p1 / p2), and G = d(u, v) / dXc, whose rows are
// (K_0 - u K_2) / p2 and (K_1 - v K_2) / p2. The residual Jacobian w.r.t. the left rotation increment w
// (R <- exp([w]x) R) and t is then [a x G_row, G_row] per row (dXc/dw = -[a]x), and d(u, v)/dX = G R.
// Inline so that refinement.cc and derivatives.cc evaluate it identically.
struct ProjectionDerivatives {
  double a[3];     // R X
  double depth;    // camera z (mm)
  double u, v;     // projection (px)
  double G[2][3];  // d(u, v) / dXc
};
inline void ProjectWithDerivatives(const double K[9], const Pose& pose, const double X[3], ProjectionDerivatives* d) {
  double p[3];
  for (int r = 0; r < 3; ++r) d->a[r] = pose.R[3 * r] * X[0] + pose.R[3 * r + 1] * X[1] + pose.R[3 * r + 2] * X[2];
  const double Xc[3] = {d->a[0] + pose.t[0], d->a[1] + pose.t[1], d->a[2] + pose.t[2]};
  for (int r = 0; r < 3; ++r) p[r] = K[3 * r] * Xc[0] + K[3 * r + 1] * Xc[1] + K[3 * r + 2] * Xc[2];
  d->depth = Xc[2];
  d->u = p[0] / p[2];
  d->v = p[1] / p[2];
  for (int k = 0; k < 3; ++k) {
    d->G[0][k] = (K[k] - d->u * K[6 + k]) / p[2];
    d->G[1][k] = (K[3 + k] - d->v * K[6 + k]) / p[2];
  }
}

// ---- ransac_pnp_core.cc
// Fills cam from a row-major float K; false when K is singular (RP_ITEM_SINGULAR_K) or not finite.
bool MakeCamera(const float* K, Camera* cam);
// The used correspondences of one item (valid, pixel and 3D coordinates finite, finite bearing) into c, and which of
// them may be sampled (weight > 0; all of them when weights is NULL). Pointers are offset to the item.
void CollectCorrespondences(const float* pixels, const float* coords, const float* weights, const uint8_t* valid,
                            int n, const Camera& cam, Correspondences* c);
// Camera and correspondences of one item, and its status: RP_ITEM_OK, or why no hypothesis can be made
// (RP_ITEM_SINGULAR_K, RP_ITEM_TOO_FEW_POINTS, RP_ITEM_COLLINEAR_POINTS). Shared by both forward drivers.
int PrepareItem(const float* pixels, const float* coords, const float* K, const float* weights, const uint8_t* valid,
                int n, Camera* cam, Correspondences* c);

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
// Bearings (of the first three) and model points (all four) of a minimal set given as positions into c.
void MinimalSetGeometry(const Correspondences& c, const int set[RP_MINIMAL_SET_SIZE], double bearings[3][3],
                        double points[RP_MINIMAL_SET_SIZE][3]);
// The minimal solver: P3P on the first three points, and of its solutions the one that reprojects the fourth point
// (model point points[3], pixel (u4, v4)) best; its error (px) in *error4_px. False when P3P has no solution.
// GenerateHypothesis and the backward's central differences (derivatives.cc) both call it.
bool SolveMinimalSet(const Camera& cam, const double bearings[3][3], const double points[RP_MINIMAL_SET_SIZE][3],
                     double u4, double v4, Pose* pose, double* error4_px);
// Draws minimal sets until one passes the 4-point check (at most RP_MAX_SAMPLE_TRIES); false when none did.
bool GenerateHypothesis(const Correspondences& c, const Camera& cam, double threshold_px, Rng* rng, Hypothesis* h);
// Every hypothesis of an item: for j = 0 .. num_hypotheses - 1 in order, GenerateHypothesis with rng, then the score
// of the made ones (ScorePose). (*made)[j] = 0 where GenerateHypothesis gave up. Returns how many were made. The
// inference driver keeps the best of them, the training form all of them.
int GenerateHypotheses(const Correspondences& c, const Camera& cam, float threshold_px, int num_hypotheses, Rng* rng,
                       std::vector<Hypothesis>* hypotheses, std::vector<uint8_t>* made);
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
// The same among the listed candidate positions only (RefinementCandidates).
void InlierPositionsAmong(const Correspondences& c, const Camera& cam, const Pose& pose, float threshold_px,
                          const std::vector<int>& candidates, std::vector<int>* positions);

// ---- refinement.cc
// Refines pose in place: Levenberg-Marquardt on the inliers, repeated while the inlier set grows, at most
// max_iterations rounds. Returns the number of rounds run. candidates: the positions refinement may use (the
// inliers are taken among them; RefinementCandidates), NULL: every used correspondence.
int RefinePose(const Correspondences& c, const Camera& cam, float threshold_px, int max_iterations, Pose* pose,
               const std::vector<int>* candidates = nullptr);
// The correspondences the training form refines on when max_refine_points > 0 and c holds more than that: every
// stride-th position, stride = ceil(c.size() / max_refine_points), so at most max_refine_points of them, spread evenly
// over the image (c is in pixel order). Depends only on which correspondences are used (not on the pose, the
// coordinates' values or the weights), so the forward and the backward pick the same ones. Returns false (and leaves
// positions empty) when every used correspondence is a candidate (max_refine_points 0 or >= c.size()).
bool RefinementCandidates(const Correspondences& c, int max_refine_points, std::vector<int>* positions);

// ---- derivatives.cc
// One item's forward outputs and upstream gradients, offset to the item, [H, ...] as in the C ABI. The gradient
// pointers may be NULL (that upstream gradient is zero).
struct HypothesesBackwardInput {
  const float* R;               // [H, 3, 3] refined
  const float* t;               // [H, 3] refined
  const float* R_init;          // [H, 3, 3] minimal-solver pose
  const float* t_init;          // [H, 3]
  const int32_t* minimal_sets;  // [H, 4] indices into the item's N correspondences
  const uint8_t* ok;            // [H]
  const float* grad_R;          // [H, 3, 3]
  const float* grad_t;          // [H, 3]
  const float* grad_score;      // [H]
  const float* grad_R_init;     // [H, 3, 3]
  const float* grad_t_init;     // [H, 3]
};
// Sets grad [c.size() * 3] to d L / d (x, y, z) of every used correspondence (positions into c). `refined`: the
// refined poses came from RefinePose (max_refine_iterations > 0), so their derivative is the implicit one at the
// least-squares optimum; otherwise R = R_init and it goes through the minimal solver. A hypothesis whose
// contribution is not finite contributes nothing; one whose minimal set is not four used correspondences gets no
// minimal-solver term (the C ABI checks that the indices are in range and distinct).
// candidates: as for RefinePose (the refined poses' inliers are taken among them), NULL: every used correspondence.
void HypothesesBackward(const Correspondences& c, const Camera& cam, float threshold_px, bool refined,
                        int num_hypotheses, const HypothesesBackwardInput& in, std::vector<double>* grad,
                        const std::vector<int>* candidates = nullptr);

}  // namespace ransac_pnp
}  // namespace synthpose

#endif  // SYNTHPOSE_RANSAC_PNP_INTERNAL_H_
