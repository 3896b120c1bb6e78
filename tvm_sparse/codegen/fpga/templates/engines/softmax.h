// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    static const unsigned n_in = {{n_in}};
    static const bool log = {{log}};
    static const unsigned lanes = {{lanes}}, acc_ii = {{acc_ii}};
};
