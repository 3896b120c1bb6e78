// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}, two output streams
struct config_{{name}} {
    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    static const unsigned n_in = {{n_in}};
    static const unsigned lanes = {{lanes}};
};
