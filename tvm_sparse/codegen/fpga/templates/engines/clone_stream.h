// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}, two output streams (the value
// types and the pack are the streams')
struct config_{{name}} {
    static const unsigned n_in = {{n_in}};
};
