-- expect: hook "decide" must be a function, got nil
return { load = function(doc) end }
