// Derivatives of the training form (DSAC): d L / d coords_mm for a scalar loss L of every hypothesis' refined pose
// (R, t), soft score and minimal-solver pose (R_init, t_init). docs/ransac_pnp.md, "Training form (DSAC)".
//
// Poses are differentiated in the parameters p = (w, t) with R = exp([w]x) R_at (left increment, w = 0 at the pose),
// so dL/dw = sum_c R[:, c] x dL/dR[:, c] (that is dL/dw_k = sum(dL/dR * ([e_k]x R))). Per ok hypothesis j:
//
// 1. Refined pose, implicit function theorem at the least-squares optimum (as DSAC++/DSAC* do): over the inliers I of
//    the refined pose (reprojection error < tau, in front of the camera; with max_refine_points, only among the
//    refinement's candidates, RefinementCandidates, so the other points get no term here), residuals r_i = proj(R X_i + t) - pixel_i,
//    J = dr/dp (2|I| x 6), J^T r = 0 at the optimum, so with the Gauss-Newton approximation of d(J^T r)/dp,
//    dp/dX_i = -(J^T J)^-1 J_i^T dr_i/dX_i and dL/dX_i = -(dr_i/dX_i)^T J_i (J^T J)^-1 (dL/dp)^T. Zero for the
//    hypothesis when it has fewer than kMinImplicitInliers inliers or J^T J is ill-conditioned
//    (kMaxNormalMatrixCondition). With max_refine_iterations = 0 there is no refinement: the pose is the minimal
//    solver's and its gradient goes through 3.
// 2. Soft score: score = sum_i sigmoid(beta (tau - e_i(p0, X_i))) over the used correspondences, p0 = (R_init,
//    t_init): a direct term d score / d X_i at fixed p0 for every used i, and d score / d p0 which goes through 3.
// 3. Minimal solver: p0 is a function of the four minimal-set coordinates (P3P on three, the fourth picks the
//    solution); dp0 / dX_m by central differences of SolveMinimalSet over each of the 12 coordinates
//    (kMinimalSolverStepMm), entries clamped (kMinimalSolverClamp*), an entry 0 when a perturbed solve fails or jumps
//    to another P3P branch (kMinimalSolverMaxJump*). dL/dX_m += (dL/dp0) (dp0/dX_m), where dL/dp0 gathers the score's
//    d score / d p0, the upstream gradient of (R_init, t_init), and that of (R, t) when there is no refinement.
//
// A hypothesis whose contribution is not finite (e.g. a NaN upstream gradient) contributes nothing; the C ABI also
// zeroes any non-finite final entry, so the gradient never holds NaN or inf.
#include <algorithm>
#include <cmath>
#include <vector>

#include "tf_ops/ransac_pnp/core/ransac_pnp_internal.h"

namespace synthpose {
namespace ransac_pnp {
namespace {

// Fewest inliers of a refined pose for the implicit derivative (3 points, 6 residuals, determine the 6 pose
// parameters; fewer leave J^T J singular).
constexpr size_t kMinImplicitInliers = 3;
// Largest condition number of J^T J, taken after scaling it to a unit diagonal (Jacobi scaling, so that the rotation
// (rad) and translation (mm) parameters compare), for which the implicit derivative is used. Objects of 20-300 mm
// at 300-1500 mm give 2-5 with 40-1000 inliers and up to ~1e3 with 3-4; above 1e6 the solve would amplify the
// float32 rounding of the inputs (relative 6e-8) to several percent of the gradient (near-collinear inliers).
constexpr double kMaxNormalMatrixCondition = 1e6;
// Cyclic Jacobi sweeps for the 6x6 eigen-decomposition (converges quadratically: 5-8 sweeps in practice), and the
// off-diagonal mass (relative to the diagonal's) at which it stops.
constexpr int kJacobiMaxSweeps = 50;
constexpr double kJacobiRelTol = 1e-28;
// Central-difference step of the minimal solver (mm). DSAC* uses 1e-3 in metres (1 mm) on scenes of metres; our
// objects are 50-300 mm, so 0.1 mm keeps the same ratio to the minimal set's extent (~1e-3), far above the double
// rounding of the solver (~1e-12 mm) and small enough that the truncation error (relative ~(step / extent)^2) is
// below 1e-5.
constexpr double kMinimalSolverStepMm = 0.1;
// Clamps of the minimal solver's derivatives (dw/dX in rad/mm, dt/dX in mm/mm): they only cut the exploding
// derivatives of near-degenerate minimal sets (P3P near its critical configurations). DSAC* clamps every entry at 10
// in metres (0.01 rad/mm, 10 mm/mm) for scenes of metres; for our objects that would cut ordinary sets: on 46,000
// minimal sets of 50-300 mm objects at 300-1500 mm (f = 500 px) the entries had medians 0.006-0.033 rad/mm and
// 1.1-17 mm/mm, 99th percentiles 0.08-0.22 rad/mm and 11-175 mm/mm, maxima 0.46 rad/mm and 435 mm/mm. The clamps
// sit just above those maxima.
constexpr double kMinimalSolverClampRadPerMm = 0.5;
constexpr double kMinimalSolverClampMmPerMm = 500.0;
// A perturbed solve that moves the pose by more than this (rotation angle, translation) from the hypothesis'
// minimal-solver pose picked another P3P branch (or the 4th point picked another solution): that entry is 0. Five
// times what a clamped derivative moves the pose over one step (0.05 rad, 50 mm); other P3P branches usually differ
// by tens of degrees (a flip to a nearby branch comes with a derivative beyond the clamp anyway).
constexpr double kMinimalSolverMaxJumpRad = 0.25;
constexpr double kMinimalSolverMaxJumpMm = 250.0;
// de/d(u, v) = (u - pixel) / e is undefined at e = 0: a point closer than this (px) to its pixel gets 0 there.
constexpr double kMinErrorPx = 1e-12;

Pose PoseFromFloats(const float* R, const float* t) {
  Pose pose;
  for (int k = 0; k < 9; ++k) pose.R[k] = R[k];
  for (int k = 0; k < 3; ++k) pose.t[k] = t[k];
  return pose;
}

inline void AddCross(const double* a, const double* b, double* out) {
  out[0] += a[1] * b[2] - a[2] * b[1];
  out[1] += a[2] * b[0] - a[0] * b[2];
  out[2] += a[0] * b[1] - a[1] * b[0];
}

// dL/dp = (dL/dw, dL/dt) of a pose with rotation R from dL/dR (row-major, may be NULL: 0) and dL/dt (may be NULL).
void PoseGradient(const double R[9], const float* grad_R, const float* grad_t, double dp[6]) {
  for (int k = 0; k < 6; ++k) dp[k] = 0.0;
  if (grad_R)
    for (int col = 0; col < 3; ++col) {
      const double r[3] = {R[col], R[3 + col], R[6 + col]};
      const double g[3] = {grad_R[col], grad_R[3 + col], grad_R[6 + col]};
      AddCross(r, g, dp);
    }
  if (grad_t)
    for (int k = 0; k < 3; ++k) dp[3 + k] = grad_t[k];
}

bool AnyNonzero(const double* v, int n) {
  for (int k = 0; k < n; ++k)
    if (v[k] != 0.0) return true;
  return false;
}

// contrib_i += R^T h (h a row vector dL/dXc; dXc/dX = R).
inline void AddThroughRotation(const double R[9], const double h[3], double* contrib_i) {
  for (int k = 0; k < 3; ++k) contrib_i[k] += h[0] * R[k] + h[1] * R[3 + k] + h[2] * R[6 + k];
}

// Eigen-decomposition A = V diag(w) V^T of a symmetric 6x6 matrix (row-major) by cyclic Jacobi rotations.
void SymmetricEigen6(const double A_in[36], double w[6], double V[36]) {
  double A[36];
  for (int k = 0; k < 36; ++k) {
    A[k] = A_in[k];
    V[k] = (k % 7 == 0) ? 1.0 : 0.0;
  }
  for (int sweep = 0; sweep < kJacobiMaxSweeps; ++sweep) {
    double off = 0.0, diag = 0.0;
    for (int p = 0; p < 6; ++p) {
      diag += A[7 * p] * A[7 * p];
      for (int q = p + 1; q < 6; ++q) off += A[6 * p + q] * A[6 * p + q];
    }
    if (off <= kJacobiRelTol * diag) break;
    for (int p = 0; p < 6; ++p)
      for (int q = p + 1; q < 6; ++q) {
        const double apq = A[6 * p + q];
        if (apq == 0.0) continue;
        // Rotation J in the (p, q) plane with tangent t that zeroes A'_pq of A' = J^T A J.
        const double theta = (A[7 * q] - A[7 * p]) / (2.0 * apq);
        const double t = (theta >= 0.0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int r = 0; r < 6; ++r) {  // A <- A J
          const double arp = A[6 * r + p], arq = A[6 * r + q];
          A[6 * r + p] = c * arp - s * arq;
          A[6 * r + q] = s * arp + c * arq;
        }
        for (int r = 0; r < 6; ++r) {  // A <- J^T A
          const double apr = A[6 * p + r], aqr = A[6 * q + r];
          A[6 * p + r] = c * apr - s * aqr;
          A[6 * q + r] = s * apr + c * aqr;
        }
        A[6 * p + q] = A[6 * q + p] = 0.0;
        for (int r = 0; r < 6; ++r) {  // V <- V J
          const double vrp = V[6 * r + p], vrq = V[6 * r + q];
          V[6 * r + p] = c * vrp - s * vrq;
          V[6 * r + q] = s * vrp + c * vrq;
        }
      }
  }
  for (int k = 0; k < 6; ++k) w[k] = A[7 * k];
}

// x = A^-1 b for the symmetric positive semi-definite J^T J, after Jacobi scaling; false when A has a zero diagonal
// entry or its scaled condition number exceeds kMaxNormalMatrixCondition (or is not finite).
bool SolveNormalMatrix(const double A[36], const double b[6], double x[6]) {
  double d[6];
  for (int k = 0; k < 6; ++k) {
    if (!(A[7 * k] > 0.0) || !std::isfinite(A[7 * k])) return false;
    d[k] = 1.0 / std::sqrt(A[7 * k]);
  }
  double S[36], w[6], V[36];
  for (int r = 0; r < 6; ++r)
    for (int k = 0; k < 6; ++k) S[6 * r + k] = d[r] * A[6 * r + k] * d[k];
  SymmetricEigen6(S, w, V);
  const double w_max = *std::max_element(w, w + 6), w_min = *std::min_element(w, w + 6);
  if (!(w_min > 0.0) || !(w_max <= kMaxNormalMatrixCondition * w_min)) return false;
  // x = D V diag(1 / w) V^T D b.
  double y[6], z[6];
  for (int k = 0; k < 6; ++k) {
    y[k] = 0.0;
    for (int r = 0; r < 6; ++r) y[k] += V[6 * r + k] * d[r] * b[r];
    y[k] /= w[k];
  }
  for (int r = 0; r < 6; ++r) {
    z[r] = 0.0;
    for (int k = 0; k < 6; ++k) z[r] += V[6 * r + k] * y[k];
    x[r] = d[r] * z[r];
  }
  return true;
}

// Part 1: contrib += dL/dX over the inliers of the refined pose (among candidates when not NULL, as RefinePose took
// them), by the implicit function theorem; dp = dL/dp.
void RefinedPoseDerivatives(const Correspondences& c, const Camera& cam, const Pose& pose, float threshold_px,
                            const double dp[6], const std::vector<int>* candidates, std::vector<int>* inliers,
                            double* contrib) {
  if (candidates)
    InlierPositionsAmong(c, cam, pose, threshold_px, *candidates, inliers);
  else
    InlierPositions(c, cam, pose, threshold_px, inliers);
  if (inliers->size() < kMinImplicitInliers) return;
  double JtJ[36] = {0};
  for (int i : *inliers) {
    const double X[3] = {c.x[i], c.y[i], c.z[i]};
    ProjectionDerivatives d;
    ProjectWithDerivatives(cam.K, pose, X, &d);
    for (int row = 0; row < 2; ++row) {
      const double* g = d.G[row];
      const double J[6] = {d.a[1] * g[2] - d.a[2] * g[1], d.a[2] * g[0] - d.a[0] * g[2], d.a[0] * g[1] - d.a[1] * g[0],
                           g[0], g[1], g[2]};
      for (int r = 0; r < 6; ++r)
        for (int k = r; k < 6; ++k) JtJ[6 * r + k] += J[r] * J[k];
    }
  }
  for (int r = 0; r < 6; ++r)
    for (int k = 0; k < r; ++k) JtJ[6 * r + k] = JtJ[6 * k + r];
  double g6[6];
  if (!SolveNormalMatrix(JtJ, dp, g6)) return;
  for (int i : *inliers) {
    const double X[3] = {c.x[i], c.y[i], c.z[i]};
    ProjectionDerivatives d;
    ProjectWithDerivatives(cam.K, pose, X, &d);
    // v = J_i g (2 values); dL/dX_i = -(G R)^T v = -R^T (G^T v).
    double h[3] = {0, 0, 0};
    for (int row = 0; row < 2; ++row) {
      const double* g = d.G[row];
      const double J[6] = {d.a[1] * g[2] - d.a[2] * g[1], d.a[2] * g[0] - d.a[0] * g[2], d.a[0] * g[1] - d.a[1] * g[0],
                           g[0], g[1], g[2]};
      double v = 0.0;
      for (int k = 0; k < 6; ++k) v += J[k] * g6[k];
      for (int k = 0; k < 3; ++k) h[k] -= v * g[k];
    }
    AddThroughRotation(pose.R, h, contrib + 3 * i);
  }
}

// Part 2: contrib += weight * d score / d X_i (at fixed p0) for every used i; dp0 += weight * d score / d p0.
void ScoreDerivatives(const Correspondences& c, const Camera& cam, const Pose& p0, float threshold_px, double weight,
                      double* contrib, double dp0[6]) {
  const float beta_f = RP_SCORE_BETA_TIMES_TAU / threshold_px;  // as ScorePose computes it
  const double beta = beta_f, tau = threshold_px, cutoff = kSigmoidCutoff;
  const size_t m = c.size();
  for (size_t i = 0; i < m; ++i) {
    const double X[3] = {c.x[i], c.y[i], c.z[i]};
    ProjectionDerivatives d;
    ProjectWithDerivatives(cam.K, p0, X, &d);
    if (!(d.depth > RP_MIN_DEPTH_MM)) continue;  // counts 0 in the score
    const double du = d.u - c.u[i], dv = d.v - c.v[i];
    const double e = std::sqrt(du * du + dv * dv);
    const double arg = beta * (tau - e);
    // Outside (-cutoff, cutoff) the score's term is constant (0 or sigmoid(cutoff)); NaN fails the test too.
    if (!(arg > -cutoff && arg < cutoff) || !(e > kMinErrorPx)) continue;
    const double s = 1.0 / (1.0 + std::exp(-arg));
    const double coef = weight * (-beta * s * (1.0 - s)) / e;  // weight * d sigmoid / d e / e
    // h = dL/dXc = coef * (du, dv) G.
    double h[3];
    for (int k = 0; k < 3; ++k) h[k] = coef * (du * d.G[0][k] + dv * d.G[1][k]);
    AddThroughRotation(p0.R, h, contrib + 3 * i);
    AddCross(d.a, h, dp0);  // dXc/dw = -[a]x: dL/dw = a x h
    for (int k = 0; k < 3; ++k) dp0[3 + k] += h[k];
  }
}

// Rotation vector w with exp([w]x) = Ra Rb^T; false when its angle exceeds kMinimalSolverMaxJumpRad.
bool SmallRotationBetween(const double Ra[9], const double Rb[9], double w[3]) {
  double M[9];
  for (int r = 0; r < 3; ++r)
    for (int k = 0; k < 3; ++k)
      M[3 * r + k] = Ra[3 * r] * Rb[3 * k] + Ra[3 * r + 1] * Rb[3 * k + 1] + Ra[3 * r + 2] * Rb[3 * k + 2];
  const double s[3] = {0.5 * (M[7] - M[5]), 0.5 * (M[2] - M[6]), 0.5 * (M[3] - M[1])};
  const double sin_angle = std::sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2]);
  const double angle = std::atan2(sin_angle, 0.5 * (M[0] + M[4] + M[8] - 1.0));
  if (!(angle <= kMinimalSolverMaxJumpRad)) return false;
  const double scale = sin_angle > 0.0 ? angle / sin_angle : 1.0;
  for (int k = 0; k < 3; ++k) w[k] = scale * s[k];
  return true;
}

bool TranslationJumped(const double a[3], const double b[3]) {
  const double d[3] = {a[0] - b[0], a[1] - b[1], a[2] - b[2]};
  return !(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]) <= kMinimalSolverMaxJumpMm);
}

inline double Clamp(double v, double limit) { return std::fmax(-limit, std::fmin(limit, v)); }

// Part 3: contrib[set] += (dL/dp0) (dp0/dX_m), dp0/dX_m by central differences of the minimal solver.
void MinimalSolverDerivatives(const Correspondences& c, const Camera& cam, const int set[RP_MINIMAL_SET_SIZE],
                              const Pose& p0, const double dp0[6], double* contrib) {
  double bearings[3][3], points[RP_MINIMAL_SET_SIZE][3];
  MinimalSetGeometry(c, set, bearings, points);
  const double u4 = c.u[set[3]], v4 = c.v[set[3]];
  const double h = kMinimalSolverStepMm;
  for (int m = 0; m < RP_MINIMAL_SET_SIZE; ++m)
    for (int k = 0; k < 3; ++k) {
      const double original = points[m][k];
      Pose plus, minus;
      double error4;
      points[m][k] = original + h;
      const bool solved_plus = SolveMinimalSet(cam, bearings, points, u4, v4, &plus, &error4);
      points[m][k] = original - h;
      const bool solved_minus = SolveMinimalSet(cam, bearings, points, u4, v4, &minus, &error4);
      points[m][k] = original;
      double w_plus[3], w_minus[3];
      if (!solved_plus || !solved_minus || !SmallRotationBetween(plus.R, p0.R, w_plus) ||
          !SmallRotationBetween(minus.R, p0.R, w_minus) || TranslationJumped(plus.t, p0.t) ||
          TranslationJumped(minus.t, p0.t))
        continue;
      double total = 0.0;
      for (int q = 0; q < 3; ++q) {
        total += dp0[q] * Clamp((w_plus[q] - w_minus[q]) / (2.0 * h), kMinimalSolverClampRadPerMm);
        total += dp0[3 + q] * Clamp((plus.t[q] - minus.t[q]) / (2.0 * h), kMinimalSolverClampMmPerMm);
      }
      contrib[3 * set[m] + k] += total;
    }
}

}  // namespace

void HypothesesBackward(const Correspondences& c, const Camera& cam, float threshold_px, bool refined,
                        int num_hypotheses, const HypothesesBackwardInput& in, std::vector<double>* grad,
                        const std::vector<int>* candidates) {
  const size_t m = c.size();
  grad->assign(3 * m, 0.0);
  std::vector<double> contrib(3 * m);
  std::vector<int> inliers;
  for (int j = 0; j < num_hypotheses; ++j) {
    if (!in.ok[j]) continue;
    const float gs = in.grad_score ? in.grad_score[j] : 0.0f;
    const Pose pose = PoseFromFloats(in.R + 9 * j, in.t + 3 * j);
    const Pose p0 = PoseFromFloats(in.R_init + 9 * j, in.t_init + 3 * j);
    double dp[6], dp0[6];
    PoseGradient(pose.R, in.grad_R ? in.grad_R + 9 * j : nullptr, in.grad_t ? in.grad_t + 3 * j : nullptr, dp);
    PoseGradient(p0.R, in.grad_R_init ? in.grad_R_init + 9 * j : nullptr,
                 in.grad_t_init ? in.grad_t_init + 3 * j : nullptr, dp0);
    if (!AnyNonzero(dp, 6) && !AnyNonzero(dp0, 6) && gs == 0.0f) continue;
    std::fill(contrib.begin(), contrib.end(), 0.0);
    // 1. The refined pose (without refinement it is p0: its gradient joins dL/dp0).
    if (AnyNonzero(dp, 6)) {
      if (refined) {
        RefinedPoseDerivatives(c, cam, pose, threshold_px, dp, candidates, &inliers, contrib.data());
      } else {
        for (int k = 0; k < 6; ++k) dp0[k] += dp[k];
      }
    }
    // 2. The score: direct term, and d score / d p0 into dL/dp0.
    if (gs != 0.0f) ScoreDerivatives(c, cam, p0, threshold_px, gs, contrib.data(), dp0);
    // 3. p0 through the minimal solver, when its set is four used correspondences (positions into c).
    if (AnyNonzero(dp0, 6)) {
      int set[RP_MINIMAL_SET_SIZE];
      bool found = true;
      for (int k = 0; k < RP_MINIMAL_SET_SIZE && found; ++k) {
        const int index = in.minimal_sets[RP_MINIMAL_SET_SIZE * j + k];
        const auto it = std::lower_bound(c.index.begin(), c.index.end(), index);
        found = it != c.index.end() && *it == index;
        if (found) set[k] = static_cast<int>(it - c.index.begin());
      }
      if (found) MinimalSolverDerivatives(c, cam, set, p0, dp0, contrib.data());
    }
    bool finite = true;
    for (double v : contrib) finite = finite && std::isfinite(v);
    if (!finite) continue;
    for (size_t k = 0; k < 3 * m; ++k) (*grad)[k] += contrib[k];
  }
}

}  // namespace ransac_pnp
}  // namespace synthpose
