// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    static const unsigned n_in = {{n_in}}, n_out = {{n_out}};
    static const unsigned in_h = {{in_h}}, in_w = {{in_w}};
    static const unsigned out_h = {{out_h}}, out_w = {{out_w}};
    static const unsigned stride_h = {{stride_h}}, stride_w = {{stride_w}};
    static const unsigned pool_h = {{pool_h}}, pool_w = {{pool_w}};
    static const unsigned lanes = {{lanes}};
    static const unsigned pool_ii = {{pool_ii}};  // the sparse engine's loop
};
