// {{source}}: {{op}} ({{engine}}) {{in_shape}} + {{in_shape}} -> {{out_shape}} (the value types
// and the pack are the streams')
struct config_{{name}} {
    typedef {{accum_t}} accum_t;
    static const unsigned n_in = {{n_in}};
    static const bool relu = {{relu}};
};
