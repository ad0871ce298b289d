// P3P minimal solver (our own, after Grunert 1841 as presented by Haralick et al., IJCV 1994): the distances
// s_i > 0 along three unit bearings y_i to the model points X_i satisfy the three laws of cosines
//   s2^2 + s3^2 - 2 s2 s3 cos(alpha) = a^2,  a = |X2 - X3|,  cos(alpha) = y2.y3
//   s1^2 + s3^2 - 2 s1 s3 cos(beta)  = b^2,  b = |X1 - X3|,  cos(beta)  = y1.y3
//   s1^2 + s2^2 - 2 s1 s2 cos(gamma) = c^2,  c = |X1 - X2|,  cos(gamma) = y1.y2
// With s2 = u s1, s3 = v s1, eliminating s1 between the first two equations and using the third for u^2 gives
//   u = N(v) / D(v),  N(v) = (A - 1) v^2 - 2 A cos(beta) v + (A + 1),  D(v) = 2 (cos(gamma) - v cos(alpha)),
//   A = (a^2 - c^2) / b^2,
// and substituting u into the third equation (times D^2) leaves a quartic in v:
//   N^2 + D^2 - 2 cos(gamma) N D - (c^2 / b^2) (1 + v^2 - 2 v cos(beta)) D^2 = 0.
// Its positive real roots give u, then s1^2 = b^2 / (1 + v^2 - 2 v cos(beta)), and the camera-frame points s_i y_i;
// the pose maps the model triangle onto that camera triangle. The quartic is built by polynomial products (no
// hand-expanded coefficients) and solved by bracketing between the roots of its derivatives (safeguarded Newton in each bracket).
#include <cmath>
#include <limits>

#include "tf_ops/ransac_pnp/core/ransac_pnp_internal.h"

namespace synthpose {
namespace ransac_pnp {
namespace {

// A polynomial's leading coefficient below this times its largest coefficient is dropped (the root it carries is
// beyond ~1e12 times the others: no finite camera configuration).
constexpr double kLeadingCoefficientRelTol = 1e-12;
// Steps per bracketed root (Newton, falling back to bisection): bisection alone reaches double precision from any
// Cauchy bound below 1e30 in this many steps; Newton typically needs 5-8.
constexpr int kMaxRootSteps = 120;
// A root is converged when the Newton step or the bracket is below this (relative to max(1, |root|)).
constexpr double kRootRelTol = 1e-14;
// Roots closer than this (relative) are merged (a double root found from two brackets).
constexpr double kDuplicateRootRelTol = 1e-10;
// A triangle of model points is degenerate when |cross| <= this times the largest squared side.
constexpr double kMinTriangleRelArea = 1e-6;
// |D(v)| below this makes u = N / D meaningless (the elimination divided by D): the root is skipped.
constexpr double kMinAbsDenominator = 1e-12;

inline double Dot(const double* a, const double* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
inline void Sub(const double* a, const double* b, double* out) {
  out[0] = a[0] - b[0];
  out[1] = a[1] - b[1];
  out[2] = a[2] - b[2];
}
inline void Cross(const double* a, const double* b, double* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}
inline bool Normalize(double* a) {
  const double n = std::sqrt(Dot(a, a));
  if (!(n > 0.0) || !std::isfinite(n)) return false;
  a[0] /= n;
  a[1] /= n;
  a[2] /= n;
  return true;
}

double EvalPolynomial(const double* c, int degree, double x) {
  double r = c[degree];
  for (int k = degree - 1; k >= 0; --k) r = r * x + c[k];
  return r;
}

// out = a * b (coefficients lowest degree first); out has da + db + 1 entries.
void MultiplyPolynomials(const double* a, int da, const double* b, int db, double* out) {
  for (int k = 0; k <= da + db; ++k) out[k] = 0.0;
  for (int i = 0; i <= da; ++i)
    for (int j = 0; j <= db; ++j) out[i + j] += a[i] * b[j];
}

// Orthonormal frame (columns e_x, e_y, e_z, row-major 3x3) of a triangle: e_x along p1 - p0, e_z its normal.
bool TriangleFrame(const double p[3][3], double frame[9]) {
  double ex[3], e2[3], ez[3], ey[3];
  Sub(p[1], p[0], ex);
  Sub(p[2], p[0], e2);
  Cross(ex, e2, ez);
  if (!Normalize(ex) || !Normalize(ez)) return false;
  Cross(ez, ex, ey);
  for (int r = 0; r < 3; ++r) {
    frame[3 * r + 0] = ex[r];
    frame[3 * r + 1] = ey[r];
    frame[3 * r + 2] = ez[r];
  }
  return true;
}

}  // namespace

int RealPolynomialRoots(const double* coeffs, int degree, double* roots) {
  double c[5];
  double largest = 0.0;
  for (int k = 0; k <= degree; ++k) {
    c[k] = coeffs[k];
    if (!std::isfinite(c[k])) return 0;
    largest = std::fmax(largest, std::fabs(c[k]));
  }
  if (largest == 0.0) return 0;
  while (degree > 0 && std::fabs(c[degree]) <= kLeadingCoefficientRelTol * largest) --degree;
  if (degree == 0) return 0;
  if (degree == 1) {
    roots[0] = -c[0] / c[1];
    return 1;
  }
  if (degree == 2) {
    const double disc = c[1] * c[1] - 4.0 * c[2] * c[0];
    if (disc < 0.0) return 0;
    // Numerically stable form: q = -(c1 + sign(c1) sqrt(disc)) / 2, roots q / c2 and c0 / q.
    const double q = -0.5 * (c[1] + std::copysign(std::sqrt(disc), c[1]));
    double r0 = q / c[2];
    double r1 = (q != 0.0) ? c[0] / q : r0;
    if (r0 > r1) std::swap(r0, r1);
    roots[0] = r0;
    roots[1] = r1;
    return 2;
  }
  // Degree 3 or 4: the polynomial is monotonic between consecutive real roots of its derivative; bracket and
  // bisect on each such interval, inside the Cauchy bound 1 + max_k |c_k / c_degree|.
  double derivative[4];
  for (int k = 0; k < degree; ++k) derivative[k] = (k + 1) * c[k + 1];
  double critical[3];
  const int n_critical = RealPolynomialRoots(derivative, degree - 1, critical);
  double bound = 0.0;
  for (int k = 0; k < degree; ++k) bound = std::fmax(bound, std::fabs(c[k] / c[degree]));
  bound += 1.0;
  double ends[5];
  int n_ends = 0;
  ends[n_ends++] = -bound;
  for (int i = 0; i < n_critical; ++i)
    if (critical[i] > -bound && critical[i] < bound) ends[n_ends++] = critical[i];
  ends[n_ends++] = bound;
  int n_roots = 0;
  for (int i = 0; i + 1 < n_ends; ++i) {
    double lo = ends[i], hi = ends[i + 1];
    double f_lo = EvalPolynomial(c, degree, lo), f_hi = EvalPolynomial(c, degree, hi);
    double root;
    if (f_lo == 0.0) {
      root = lo;
    } else if (f_hi == 0.0) {
      root = hi;
    } else if ((f_lo < 0.0) != (f_hi < 0.0)) {
      // Safeguarded Newton: a Newton step when it stays inside the bracket, else bisection.
      const bool rising = f_hi > 0.0;
      double x = 0.5 * (lo + hi);
      for (int step = 0; step < kMaxRootSteps; ++step) {
        const double f = EvalPolynomial(c, degree, x);
        if (f == 0.0) break;
        if ((f > 0.0) == rising) {
          hi = x;
        } else {
          lo = x;
        }
        const double df = EvalPolynomial(derivative, degree - 1, x);
        double next = (df != 0.0) ? x - f / df : 0.5 * (lo + hi);
        if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
        const bool converged = std::fabs(next - x) <= kRootRelTol * std::fmax(1.0, std::fabs(x));
        x = next;
        if (converged || hi - lo <= kRootRelTol * std::fmax(1.0, std::fabs(x))) break;
      }
      root = x;
    } else {
      continue;
    }
    if (n_roots > 0 && std::fabs(root - roots[n_roots - 1]) <=
                           kDuplicateRootRelTol * std::fmax(1.0, std::fabs(root)))
      continue;
    roots[n_roots++] = root;
  }
  return n_roots;
}

bool PoseFromTriangles(const double model[3][3], const double camera[3][3], Pose* pose) {
  double fm[9], fc[9];
  if (!TriangleFrame(model, fm) || !TriangleFrame(camera, fc)) return false;
  // R = Fc Fm^T maps the model frame's axes onto the camera frame's.
  for (int r = 0; r < 3; ++r)
    for (int k = 0; k < 3; ++k)
      pose->R[3 * r + k] = fc[3 * r + 0] * fm[3 * k + 0] + fc[3 * r + 1] * fm[3 * k + 1] + fc[3 * r + 2] * fm[3 * k + 2];
  // t from the centroids (spreads the rounding of the three points evenly).
  double cm[3] = {0, 0, 0}, cc[3] = {0, 0, 0};
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) {
      cm[k] += model[i][k] / 3.0;
      cc[k] += camera[i][k] / 3.0;
    }
  for (int r = 0; r < 3; ++r) pose->t[r] = cc[r] - Dot(&pose->R[3 * r], cm);
  for (double v : pose->R)
    if (!std::isfinite(v)) return false;
  return std::isfinite(pose->t[0]) && std::isfinite(pose->t[1]) && std::isfinite(pose->t[2]);
}

int SolveP3P(const double bearings[3][3], const double points[3][3], Pose poses[4]) {
  double d12[3], d13[3], d23[3], normal[3];
  Sub(points[0], points[1], d12);
  Sub(points[0], points[2], d13);
  Sub(points[1], points[2], d23);
  const double a2 = Dot(d23, d23), b2 = Dot(d13, d13), c2 = Dot(d12, d12);
  Cross(d12, d13, normal);
  const double largest_side2 = std::fmax(a2, std::fmax(b2, c2));
  if (!(largest_side2 > 0.0) || std::sqrt(Dot(normal, normal)) <= kMinTriangleRelArea * largest_side2) return 0;
  const double cos_alpha = Dot(bearings[1], bearings[2]);
  const double cos_beta = Dot(bearings[0], bearings[2]);
  const double cos_gamma = Dot(bearings[0], bearings[1]);
  const double A = (a2 - c2) / b2, C = c2 / b2;
  const double N[3] = {A + 1.0, -2.0 * A * cos_beta, A - 1.0};
  const double D[2] = {2.0 * cos_gamma, -2.0 * cos_alpha};
  const double Q[3] = {1.0, -2.0 * cos_beta, 1.0};
  double NN[5], DD[3], ND[4], QDD[5];
  MultiplyPolynomials(N, 2, N, 2, NN);
  MultiplyPolynomials(D, 1, D, 1, DD);
  MultiplyPolynomials(N, 2, D, 1, ND);
  MultiplyPolynomials(Q, 2, DD, 2, QDD);
  double quartic[5];
  for (int k = 0; k <= 4; ++k)
    quartic[k] = NN[k] + (k <= 2 ? DD[k] : 0.0) - 2.0 * cos_gamma * (k <= 3 ? ND[k] : 0.0) - C * QDD[k];
  double roots[4];
  const int n_roots = RealPolynomialRoots(quartic, 4, roots);
  int n_poses = 0;
  for (int i = 0; i < n_roots; ++i) {
    const double v = roots[i];
    if (!(v > 0.0)) continue;
    const double d = EvalPolynomial(D, 1, v);
    if (std::fabs(d) < kMinAbsDenominator) continue;
    const double u = EvalPolynomial(N, 2, v) / d;
    if (!(u > 0.0)) continue;
    const double q = EvalPolynomial(Q, 2, v);  // (v - cos beta)^2 + sin^2 beta > 0 for distinct bearings
    if (!(q > 0.0)) continue;
    const double s1 = std::sqrt(b2 / q);
    const double s[3] = {s1, u * s1, v * s1};
    double camera[3][3];
    for (int p = 0; p < 3; ++p)
      for (int k = 0; k < 3; ++k) camera[p][k] = s[p] * bearings[p][k];
    if (PoseFromTriangles(points, camera, &poses[n_poses])) ++n_poses;
  }
  return n_poses;
}

}  // namespace ransac_pnp
}  // namespace synthpose
