#version 330 core
// A cheaper replacement of pyrender's PBR mesh.frag for CPU rendering (Mesa llvmpipe): Lambert diffuse plus a
// Blinn-Phong highlight whose strength and sharpness follow the material's metallic/roughness factors, for
// directional, point and spot lights and ambient light. Same uniform names as pyrender's shader (pyrender binds them).
// No shadows, no normal/emissive/occlusion maps (the generator does not use them).

struct SpotLight {
    vec3 color;
    float intensity;
    float range;
    vec3 position;
    vec3 direction;
    float light_angle_scale;
    float light_angle_offset;
};

struct DirectionalLight {
    vec3 color;
    float intensity;
    vec3 direction;
};

struct PointLight {
    vec3 color;
    float intensity;
    float range;
    vec3 position;
};

struct Material {
    vec3 emissive_factor;
#ifdef USE_METALLIC_MATERIAL
    vec4 base_color_factor;
    float metallic_factor;
    float roughness_factor;
#endif
#ifdef USE_GLOSSY_MATERIAL
    vec4 diffuse_factor;
    vec3 specular_factor;
    float glossiness_factor;
#endif
#ifdef HAS_BASE_COLOR_TEX
    sampler2D base_color_texture;
#endif
#ifdef HAS_DIFFUSE_TEX
    sampler2D diffuse_texture;
#endif
};

uniform Material material;
uniform PointLight point_lights[MAX_POINT_LIGHTS];
uniform int n_point_lights;
uniform DirectionalLight directional_lights[MAX_DIRECTIONAL_LIGHTS];
uniform int n_directional_lights;
uniform SpotLight spot_lights[MAX_SPOT_LIGHTS];
uniform int n_spot_lights;
uniform vec3 cam_pos;
uniform vec3 ambient_light;

in vec3 frag_position;
#ifdef NORMAL_LOC
in vec3 frag_normal;
#endif
#ifdef TEXCOORD_0_LOC
in vec2 uv_0;
#endif
#ifdef COLOR_0_LOC
in vec4 color_multiplier;
#endif

out vec4 frag_color;

const float PI = 3.141592653589793;

void main()
{
    vec4 base_color = vec4(1.0);
    float roughness = 1.0;
    float metallic = 0.0;
#ifdef USE_METALLIC_MATERIAL
    base_color = material.base_color_factor;
    roughness = clamp(material.roughness_factor, 0.04, 1.0);
    metallic = clamp(material.metallic_factor, 0.0, 1.0);
#endif
#ifdef USE_GLOSSY_MATERIAL
    base_color = material.diffuse_factor;
#endif
#ifdef HAS_BASE_COLOR_TEX
    vec4 t = texture(material.base_color_texture, uv_0);
    base_color = base_color * vec4(t.rgb * t.rgb, t.a);  // sRGB -> linear (gamma 2)
#endif
#ifdef COLOR_0_LOC
    base_color = base_color * color_multiplier;
#endif

#ifdef NORMAL_LOC
    vec3 n = normalize(frag_normal);
#else
    vec3 n = normalize(cross(dFdx(frag_position), dFdy(frag_position)));
#endif
    vec3 v = normalize(cam_pos - frag_position);
    if (dot(n, v) < 0.0) n = -n;  // two-sided (back faces are not culled)

    vec3 c_diff = base_color.rgb * (1.0 - metallic) / PI;
    vec3 c_spec = mix(vec3(0.04), base_color.rgb, metallic);
    float shininess = 2.0 / max(roughness * roughness * roughness * roughness, 1e-3);
    float spec_norm = (shininess + 8.0) / (8.0 * PI);

    vec3 color = vec3(0.0);
    for (int i = 0; i < n_directional_lights; i++) {
        vec3 l = -directional_lights[i].direction;
        vec3 h = normalize(l + v);
        float nl = max(dot(n, l), 0.0);
        vec3 radiance = directional_lights[i].intensity * directional_lights[i].color;
        color += radiance * nl * (c_diff + c_spec * spec_norm * pow(max(dot(n, h), 0.0), shininess));
    }
    for (int i = 0; i < n_point_lights; i++) {
        vec3 d = point_lights[i].position - frag_position;
        float dist2 = dot(d, d);
        vec3 l = d * inversesqrt(dist2);
        vec3 h = normalize(l + v);
        float nl = max(dot(n, l), 0.0);
        vec3 radiance = point_lights[i].intensity / dist2 * point_lights[i].color;
        color += radiance * nl * (c_diff + c_spec * spec_norm * pow(max(dot(n, h), 0.0), shininess));
    }
    for (int i = 0; i < n_spot_lights; i++) {
        vec3 d = spot_lights[i].position - frag_position;
        float dist2 = dot(d, d);
        vec3 l = d * inversesqrt(dist2);
        vec3 h = normalize(l + v);
        float nl = max(dot(n, l), 0.0);
        float cd = clamp(dot(spot_lights[i].direction, -l), 0.0, 1.0);
        float att = clamp(cd * spot_lights[i].light_angle_scale + spot_lights[i].light_angle_offset, 0.0, 1.0);
        vec3 radiance = att * att * spot_lights[i].intensity / dist2 * spot_lights[i].color;
        color += radiance * nl * (c_diff + c_spec * spec_norm * pow(max(dot(n, h), 0.0), shininess));
    }
    color += base_color.rgb * ambient_light;
    frag_color = vec4(sqrt(clamp(color, 0.0, 1.0)), base_color.a);  // linear -> display (gamma 2)
}
