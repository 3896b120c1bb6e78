// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    typedef {{weight_t}} weight_t;
    typedef {{bias_t}} bias_t;
    typedef {{accum_t}} accum_t;
    static const unsigned n_in = {{n_in}}, n_out = {{n_out}};
    static const unsigned out_c = {{out_c}};
    static const bool relu = {{relu}};
    static const unsigned lanes = {{lanes}}, pe = {{pe}}, simd = {{simd}};
};
