// {{source}}: {{op}} ({{engine}}) {{in_shape}} + {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    typedef {{accum_t}} accum_t;
    static const unsigned n_in = {{n_in}};
    static const bool relu = {{relu}};
    static const unsigned lanes = {{lanes}};
};
