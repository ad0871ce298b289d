// Refinement: Levenberg-Marquardt on the reprojection errors (px) of the inliers, with the rotation updated on the
// left by a rotation vector (R <- exp([w]x) R, t <- t + dt), repeated while the inlier set grows (as DSAC*'s
// refinement loop, which re-runs an iterative PnP on the inliers).
#include <cmath>
#include <limits>

#include "tf_ops/ransac_pnp/core/ransac_pnp_internal.h"

namespace synthpose {
namespace ransac_pnp {
namespace {

// Levenberg-Marquardt iterations (accepted or rejected steps) per refinement round. From a P3P start the cost
// settles in 3-5 Gauss-Newton steps.
constexpr int kLmMaxIterations = 10;
// Initial damping, relative to the diagonal of J^T J (Marquardt's scaling), and its change after a rejected /
// accepted step; damping above kLmMaxDamping means no step reduces the cost: stop.
constexpr double kLmInitialDamping = 1e-4;
constexpr double kLmDampingIncrease = 10.0;
constexpr double kLmDampingDecrease = 0.1;
constexpr double kLmMaxDamping = 1e8;
// Floor of the damping after accepted steps (keeps J^T J + damping diag(J^T J) well conditioned in long runs).
constexpr double kLmMinDamping = 1e-12;
// Below this rotation angle (rad) Rodrigues' coefficients use their Taylor series (no 0/0).
constexpr double kSmallAngleRad = 1e-8;
// An accepted step that lowers the cost by less than this fraction ends the round (converged).
constexpr double kLmMinRelativeDecrease = 1e-9;
// Fewest inliers a refinement round needs (6 unknowns, 2 residuals per point: 3 points determine the pose, the
// 4th makes the least-squares problem overdetermined, like a minimal set).
constexpr size_t kMinRefinePoints = RP_MINIMAL_SET_SIZE;

// Sum of squared reprojection errors (px^2) of the listed correspondences; +infinity when one is behind the camera.
double Cost(const Correspondences& c, const Camera& cam, const Pose& pose, const std::vector<int>& positions) {
  double total = 0.0;
  for (int i : positions) {
    const double X[3] = {c.x[i], c.y[i], c.z[i]};
    const double e = ReprojectionErrorPx(cam, pose, X, c.u[i], c.v[i]);
    total += e * e;
  }
  return std::isfinite(total) ? total : std::numeric_limits<double>::infinity();
}

// J^T J (6x6, row-major) and J^T r (6) of the residuals r = projection - pixel; parameters (w, dt).
void NormalEquations(const Correspondences& c, const Camera& cam, const Pose& pose, const std::vector<int>& positions,
                     double JtJ[36], double Jtr[6]) {
  for (int k = 0; k < 36; ++k) JtJ[k] = 0.0;
  for (int k = 0; k < 6; ++k) Jtr[k] = 0.0;
  for (int i : positions) {
    const double X[3] = {c.x[i], c.y[i], c.z[i]};
    ProjectionDerivatives d;  // a = R X, (u, v), G = d(u, v)/dXc
    ProjectWithDerivatives(cam.K, pose, X, &d);
    const double* a = d.a;
    const double res[2] = {d.u - c.u[i], d.v - c.v[i]};
    for (int row = 0; row < 2; ++row) {
      // dXc/dw = -[a]x, so d(res)/dw = g (-[a]x) = a x g; d(res)/dt = g.
      const double* gr = d.G[row];
      const double J[6] = {a[1] * gr[2] - a[2] * gr[1], a[2] * gr[0] - a[0] * gr[2], a[0] * gr[1] - a[1] * gr[0],
                           gr[0], gr[1], gr[2]};
      for (int r = 0; r < 6; ++r) {
        Jtr[r] += J[r] * res[row];
        for (int k = r; k < 6; ++k) JtJ[6 * r + k] += J[r] * J[k];
      }
    }
  }
  for (int r = 0; r < 6; ++r)
    for (int k = 0; k < r; ++k) JtJ[6 * r + k] = JtJ[6 * k + r];
}

// Solves A x = b for a symmetric positive definite 6x6 A (Cholesky); false when A is not positive definite.
bool SolveSpd6(const double A[36], const double b[6], double x[6]) {
  double L[36] = {0};
  for (int r = 0; r < 6; ++r) {
    for (int k = 0; k <= r; ++k) {
      double s = A[6 * r + k];
      for (int j = 0; j < k; ++j) s -= L[6 * r + j] * L[6 * k + j];
      if (r == k) {
        if (!(s > 0.0)) return false;
        L[6 * r + r] = std::sqrt(s);
      } else {
        L[6 * r + k] = s / L[6 * k + k];
      }
    }
  }
  double y[6];
  for (int r = 0; r < 6; ++r) {
    double s = b[r];
    for (int j = 0; j < r; ++j) s -= L[6 * r + j] * y[j];
    y[r] = s / L[6 * r + r];
  }
  for (int r = 5; r >= 0; --r) {
    double s = y[r];
    for (int j = r + 1; j < 6; ++j) s -= L[6 * j + r] * x[j];
    x[r] = s / L[6 * r + r];
  }
  return true;
}

// Rotation matrix of the rotation vector w (Rodrigues), row-major.
void RotationFromVector(const double w[3], double R[9]) {
  const double theta2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2];
  const double theta = std::sqrt(theta2);
  // sin(theta)/theta and (1 - cos(theta))/theta^2, with their Taylor series near 0.
  double A, B;
  if (theta < kSmallAngleRad) {
    A = 1.0 - theta2 / 6.0;
    B = 0.5 - theta2 / 24.0;
  } else {
    A = std::sin(theta) / theta;
    B = (1.0 - std::cos(theta)) / theta2;
  }
  // R = I + A [w]x + B [w]x^2
  const double W[9] = {0, -w[2], w[1], w[2], 0, -w[0], -w[1], w[0], 0};
  for (int r = 0; r < 3; ++r)
    for (int k = 0; k < 3; ++k) {
      double W2 = W[3 * r] * W[k] + W[3 * r + 1] * W[3 + k] + W[3 * r + 2] * W[6 + k];
      R[3 * r + k] = (r == k ? 1.0 : 0.0) + A * W[3 * r + k] + B * W2;
    }
}

// One Levenberg-Marquardt run on the listed correspondences; pose only changes when the cost goes down.
void LevenbergMarquardt(const Correspondences& c, const Camera& cam, const std::vector<int>& positions, Pose* pose) {
  double cost = Cost(c, cam, *pose, positions);
  if (!std::isfinite(cost)) return;
  double damping = kLmInitialDamping;
  double JtJ[36], Jtr[6];
  bool need_normal_equations = true;
  for (int iteration = 0; iteration < kLmMaxIterations; ++iteration) {
    if (need_normal_equations) NormalEquations(c, cam, *pose, positions, JtJ, Jtr);
    double A[36], minus_g[6], step[6];
    for (int k = 0; k < 36; ++k) A[k] = JtJ[k];
    for (int r = 0; r < 6; ++r) {
      A[7 * r] += damping * JtJ[7 * r];
      minus_g[r] = -Jtr[r];
    }
    if (!SolveSpd6(A, minus_g, step)) {
      damping *= kLmDampingIncrease;
      need_normal_equations = false;
      if (damping > kLmMaxDamping) return;
      continue;
    }
    Pose trial;
    double dR[9];
    RotationFromVector(step, dR);
    for (int r = 0; r < 3; ++r) {
      for (int k = 0; k < 3; ++k)
        trial.R[3 * r + k] = dR[3 * r] * pose->R[k] + dR[3 * r + 1] * pose->R[3 + k] + dR[3 * r + 2] * pose->R[6 + k];
      trial.t[r] = pose->t[r] + step[3 + r];
    }
    const double trial_cost = Cost(c, cam, trial, positions);
    if (trial_cost < cost) {
      const double decrease = (cost - trial_cost) / std::fmax(cost, std::numeric_limits<double>::min());
      *pose = trial;
      cost = trial_cost;
      damping = std::fmax(damping * kLmDampingDecrease, kLmMinDamping);
      need_normal_equations = true;
      if (decrease < kLmMinRelativeDecrease) return;
    } else {
      damping *= kLmDampingIncrease;
      need_normal_equations = false;
      if (damping > kLmMaxDamping) return;
    }
  }
}

}  // namespace

int RefinePose(const Correspondences& c, const Camera& cam, float threshold_px, int max_iterations, Pose* pose,
               const std::vector<int>* candidates) {
  std::vector<int> inliers;
  size_t previous_count = 0;
  int rounds = 0;
  for (; rounds < max_iterations; ++rounds) {
    if (candidates)
      InlierPositionsAmong(c, cam, *pose, threshold_px, *candidates, &inliers);
    else
      InlierPositions(c, cam, *pose, threshold_px, &inliers);
    if (inliers.size() <= previous_count || inliers.size() < kMinRefinePoints) break;
    previous_count = inliers.size();
    LevenbergMarquardt(c, cam, inliers, pose);
  }
  return rounds;
}

bool RefinementCandidates(const Correspondences& c, int max_refine_points, std::vector<int>* positions) {
  positions->clear();
  const size_t m = c.size();
  if (max_refine_points <= 0 || m <= static_cast<size_t>(max_refine_points)) return false;
  const size_t cap = static_cast<size_t>(max_refine_points);
  const size_t stride = (m + cap - 1) / cap;
  for (size_t p = 0; p < m; p += stride) positions->push_back(static_cast<int>(p));
  return true;
}

}  // namespace ransac_pnp
}  // namespace synthpose
