// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}, k = {{k}}
struct config_{{name}} {
    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    typedef {{rank_t}} rank_t;
    typedef {{boost_t}} boost_t;
    typedef {{boost_store_t}} boost_store_t;  // the table's element: the value, or boost_t's raw word
    static const unsigned n_in = {{n_in}};
    static const unsigned k = {{k}}, boosted = {{boosted}}, n_boost = {{n_boost}};
    static const unsigned boost_stride = {{boost_stride}}, exact = {{exact}};
    static const unsigned lanes = {{lanes}};
};
