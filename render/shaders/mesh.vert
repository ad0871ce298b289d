#version 330 core
// pyrender's mesh.vert without the per-vertex 4x4 matrix inverse (costly on a CPU rasterizer): normals are
// transformed with the model matrix itself, exact for rotations with uniform scale (the object); the distractors'
// non-uniform scale bends their shading slightly, which does not matter for random shapes.
layout(location = 0) in vec3 position;
#ifdef NORMAL_LOC
layout(location = NORMAL_LOC) in vec3 normal;
#endif
#ifdef TEXCOORD_0_LOC
layout(location = TEXCOORD_0_LOC) in vec2 texcoord_0;
#endif
#ifdef COLOR_0_LOC
layout(location = COLOR_0_LOC) in vec4 color_0;
#endif
layout(location = INST_M_LOC) in mat4 inst_m;

uniform mat4 M;
uniform mat4 V;
uniform mat4 P;

out vec3 frag_position;
#ifdef NORMAL_LOC
out vec3 frag_normal;
#endif
#ifdef TEXCOORD_0_LOC
out vec2 uv_0;
#endif
#ifdef COLOR_0_LOC
out vec4 color_multiplier;
#endif

void main()
{
    mat4 MI = M * inst_m;
    vec4 world = MI * vec4(position, 1.0);
    gl_Position = P * V * world;
    frag_position = vec3(world);
#ifdef NORMAL_LOC
    frag_normal = normalize(mat3(MI) * normal);
#endif
#ifdef TEXCOORD_0_LOC
    uv_0 = texcoord_0;
#endif
#ifdef COLOR_0_LOC
    color_multiplier = color_0;
#endif
}
